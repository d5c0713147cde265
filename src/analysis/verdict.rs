//! What one measurement concluded, and the evidence a human needs to check it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Inconclusive => "Inconclusive",
        })
    }
}

/// The arm a query was rendered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    Canary,
    Baseline,
}

impl std::fmt::Display for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arm::Canary => "canary",
            Arm::Baseline => "baseline",
        })
    }
}

/// One query as it was sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenderedQuery {
    pub arm: Arm,
    /// What the query measures: `value`, `requests`, `errors`, `buckets`.
    pub role: String,
    pub query: String,
}

/// One measurement of one metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub metric: String,
    /// Unix seconds of the evaluation.
    pub at: i64,
    pub verdict: Verdict,
    /// One sentence: why this verdict, with the numbers.
    pub reason: String,
    pub queries: Vec<RenderedQuery>,
    /// Judgment-specific numbers: per-arm values and counts, the statistic and its threshold.
    pub evidence: serde_json::Value,
    pub dry_run: bool,
}
