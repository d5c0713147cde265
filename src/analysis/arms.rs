//! What a share judgment is configured with and counts: its margins and budget, and the
//! requests and bad events of each arm. Shared by the judgment (`share.rs`) and the forecast
//! of its Pass (`estimate.rs`).

use serde::Serialize;

use crate::api::analysis::ErrorRate;

/// The false-positive budget of a judgment: the chance that a canary no worse than its
/// baseline is failed, at most, per rollout-hour.
pub const ALPHA: f64 = 0.01;
/// Level of the evidence required for a Pass.
pub const PASS_ALPHA: f64 = 0.05;

/// How a share judgment is configured: the margin a canary must be shown within
/// (`toleratedRatio`, `floor`), the requests each arm needs, and the false-positive budget.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareConfig {
    pub tolerated_ratio: f64,
    pub floor: f64,
    pub min_requests: f64,
    pub alpha: f64,
}

impl From<&ErrorRate> for ShareConfig {
    fn from(e: &ErrorRate) -> ShareConfig {
        ShareConfig::new(e.tolerated_ratio, e.floor, e.min_requests as f64)
    }
}

impl ShareConfig {
    pub fn new(tolerated_ratio: f64, floor: f64, min_requests: f64) -> ShareConfig {
        ShareConfig {
            tolerated_ratio,
            floor,
            min_requests,
            alpha: ALPHA,
        }
    }
}

/// Requests and bad events of one arm, accumulated over the analysis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmCounts {
    pub requests: f64,
    pub events: f64,
}

impl ArmCounts {
    pub fn rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.events / self.requests)
    }
}
