//! rollguard: progressive delivery for Kubernetes that takes a release back when the metrics
//! say it is worse than what runs today.
//!
//! The crate splits a pure core (decisions as functions of plain data) from a thin I/O shell.

pub mod analysis;
pub mod api;
pub mod backtest;
pub mod cli;
pub mod controller;
pub mod escalation;
pub mod history;
pub mod lint;
pub mod ops;
pub mod preflight;
pub mod redeploy;
pub mod rollout;
pub mod secrets;
pub mod templates;
pub mod time;
pub mod traffic;
