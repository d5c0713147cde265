//! Traffic routers: the route objects whose weights split traffic between stable and canary.
//!
//! `route` has the shared model (rules, backends, the `RouteType` trait); `gateway`, `istio`
//! and `smi` are one file per kind; `kinds` maps a kind to its file and finds the route a
//! Rollout names; `weights` reads and patches weights; `router` writes and verifies them, on a
//! route or through replica counts, and picks the one a Rollout's spec calls for.

pub mod gateway;
pub mod istio;
pub mod kinds;
pub mod route;
pub mod router;
pub mod smi;
pub mod weights;

pub use route::{Backend, RouteError, RouteKind, RouteRule};
pub use router::{Router, RouterError};
pub use weights::{Arms, Weights};
