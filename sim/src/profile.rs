//! Fault profiles: how a version behaves, declared on its pod template.
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     sim.rollguard.dev/profile: '{"errorRate": 0.1, "p50Ms": 20, "p99Ms": 400}'
//! ```
//!
//! The simulator reads it from each Ready pod, so it follows any workload controller, and a
//! change to a running pod's annotation shows up on the next tick.

use rand_distr::LogNormal;
use serde::Deserialize;

pub const PROFILE_ANNOTATION: &str = "sim.rollguard.dev/profile";

/// z-score of the 99th percentile of the standard normal distribution (scipy.stats.norm.ppf(0.99)).
const Z_99: f64 = 2.326_347_874_040_841;

/// Error ratio and latency distribution of one version.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultProfile {
    /// Share of requests answered with `errorCode`, in [0, 1].
    #[serde(default)]
    pub error_rate: f64,
    /// Status code of the failing requests.
    #[serde(default = "default_error_code")]
    pub error_code: u16,
    /// Median latency in milliseconds.
    #[serde(default = "default_p50")]
    pub p50_ms: f64,
    /// 99th percentile latency in milliseconds; latencies are log-normal between the two.
    #[serde(default = "default_p99")]
    pub p99_ms: f64,
}

fn default_error_code() -> u16 {
    500
}
fn default_p50() -> f64 {
    20.0
}
fn default_p99() -> f64 {
    100.0
}

impl Default for FaultProfile {
    fn default() -> Self {
        FaultProfile {
            error_rate: 0.0,
            error_code: default_error_code(),
            p50_ms: default_p50(),
            p99_ms: default_p99(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    #[error("annotation {PROFILE_ANNOTATION} is not a valid profile: {0}")]
    Syntax(String),
    #[error("annotation {PROFILE_ANNOTATION}: {field} {reason}")]
    Value { field: &'static str, reason: String },
}

impl FaultProfile {
    pub fn parse(text: &str) -> Result<FaultProfile, ProfileError> {
        let profile: FaultProfile =
            serde_json::from_str(text).map_err(|e| ProfileError::Syntax(e.to_string()))?;
        profile.validate()?;
        Ok(profile)
    }

    fn validate(&self) -> Result<(), ProfileError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(ProfileError::Value {
                field: "errorRate",
                reason: format!("must be within [0, 1], got {}", self.error_rate),
            });
        }
        if !(100..=599).contains(&self.error_code) {
            return Err(ProfileError::Value {
                field: "errorCode",
                reason: format!("must be an HTTP status code, got {}", self.error_code),
            });
        }
        if !(self.p50_ms.is_finite() && self.p50_ms > 0.0) {
            return Err(ProfileError::Value {
                field: "p50Ms",
                reason: format!("must be a positive number, got {}", self.p50_ms),
            });
        }
        if !(self.p99_ms.is_finite() && self.p99_ms >= self.p50_ms) {
            return Err(ProfileError::Value {
                field: "p99Ms",
                reason: format!(
                    "must be at least p50Ms ({}), got {}",
                    self.p50_ms, self.p99_ms
                ),
            });
        }
        Ok(())
    }

    /// The latency distribution: log-normal with the profile's median and 99th percentile.
    pub fn latency(&self) -> LogNormal<f64> {
        let mu = self.p50_ms.ln();
        let sigma = (self.p99_ms.ln() - mu) / Z_99;
        LogNormal::new(mu, sigma).expect("validate() guarantees a finite mu and sigma >= 0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand_distr::Distribution;

    #[test]
    fn parses_with_defaults() {
        assert_eq!(FaultProfile::parse("{}"), Ok(FaultProfile::default()));
        let p = FaultProfile::parse(r#"{"errorRate":0.1,"errorCode":503,"p50Ms":30,"p99Ms":300}"#)
            .expect("valid profile");
        assert_eq!(p.error_rate, 0.1);
        assert_eq!(p.error_code, 503);
    }

    #[test]
    fn rejects_bad_profiles_naming_the_field() {
        let cases = [
            (
                r#"{"errorRate": 1.5}"#,
                "errorRate must be within [0, 1], got 1.5",
            ),
            (
                r#"{"errorCode": 42}"#,
                "errorCode must be an HTTP status code, got 42",
            ),
            (r#"{"p50Ms": 0}"#, "p50Ms must be a positive number, got 0"),
            (
                r#"{"p50Ms": 50, "p99Ms": 10}"#,
                "p99Ms must be at least p50Ms (50), got 10",
            ),
        ];
        for (text, message) in cases {
            let err = FaultProfile::parse(text).expect_err(text);
            assert_eq!(
                err.to_string(),
                format!("annotation {PROFILE_ANNOTATION}: {message}")
            );
        }
        let err = FaultProfile::parse(r#"{"errorrate": 0.1}"#).expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `errorrate`"),
            "{err}"
        );
        assert!(matches!(
            FaultProfile::parse("10%"),
            Err(ProfileError::Syntax(_))
        ));
    }

    #[test]
    fn latency_quantiles_match_the_profile() {
        let p = FaultProfile::parse(r#"{"p50Ms": 20, "p99Ms": 200}"#).expect("valid profile");
        let dist = p.latency();
        let mut rng = StdRng::seed_from_u64(7);
        let mut xs: Vec<f64> = (0..200_000).map(|_| dist.sample(&mut rng)).collect();
        xs.sort_by(f64::total_cmp);
        let q = |f: f64| xs[(f * xs.len() as f64) as usize];
        assert!((q(0.50) - 20.0).abs() < 0.5, "p50 {}", q(0.50));
        assert!((q(0.99) - 200.0).abs() < 10.0, "p99 {}", q(0.99));
    }
}
