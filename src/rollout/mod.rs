//! The rollout lifecycle as plain data: what the cluster looks like ([`Observed`]), and the
//! actions and status that follow from it ([`Plan`]). Nothing here does I/O or reads a clock;
//! the controller applies a plan and records its status.

pub mod machine;
pub mod workload;

pub use machine::{Action, AnalysisView, Arm, Observed, Plan, Request, RequestAction, decide};
