//! Traffic routers: the route objects whose weights split traffic between stable and canary.

pub mod route;
pub mod router;
pub mod weights;

pub use route::{Backend, RouteError, RouteKind, RouteRule};
pub use router::{Router, RouterError};
pub use weights::{Arms, Weights};
