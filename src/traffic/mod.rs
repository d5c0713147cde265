//! Traffic routers: the route objects whose weights split traffic between stable and canary.

pub mod route;

pub use route::{Backend, RouteError, RouteKind, RouteRule};
