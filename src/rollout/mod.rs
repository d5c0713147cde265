//! The rollout lifecycle, pure: [`decide::decide`] takes the Rollout's spec and status and what
//! was observed (the target's artifact, the owned Deployments, the Releases, the analysis
//! decision, a manual request, the time) and returns the actions to apply, in order, and the
//! status to record once they all succeeded. When an action fails, [`decide::failed`] gives the
//! status to record instead. Every plan is safe to apply twice: actions are idempotent and a
//! step is recorded before the next one begins.
//!
//! One file per stage: `plan` (the types), `planner` (its helpers), `decide` (the dispatch),
//! `idle` (stable, blocked, rolled back), `requests`, `canary` (steps), `promote`, `saga`
//! (rollback), `incidents` (the outbox) and `outcome` (DORA). `workload` reads and names the
//! arms' Deployments.

mod canary;
pub mod decide;
mod idle;
pub mod incidents;
pub mod outcome;
pub mod plan;
mod planner;
mod promote;
mod requests;
mod revert;
mod saga;
pub mod workload;

#[cfg(test)]
pub(crate) mod fixtures;

pub use planner::set_condition;
