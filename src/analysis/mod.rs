//! The analysis engine: safe query rendering, the metric source, and the judgments that turn
//! per-arm measurements into Pass, Fail or Inconclusive with evidence.

pub mod arms;
pub mod bounds;
pub mod change;
pub mod counters;
pub mod estimate;
pub mod judge;
pub mod latency;
pub mod prometheus;
pub mod provider;
pub mod render;
pub mod run;
pub mod sequential;
pub mod share;
pub mod source;
pub mod verdict;
