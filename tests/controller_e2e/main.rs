//! The controller on the real control plane, with the traffic simulator and the real Prometheus
//! closing the loop: weights → traffic → metrics → analysis → promotion or rollback.
//!
//! Run by `make test` (needs `scripts/env up`): `cargo test --test controller_e2e -- --ignored`.
//! One binary, with modules by theme.

#[path = "../common/mod.rs"]
mod common;

mod delivery;
mod escalation;
mod faults;
mod fixture;
mod forecast;
mod leader;
mod manual;
mod rbac;
mod saga;
mod startup;
