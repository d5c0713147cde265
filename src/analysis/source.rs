//! Where measurements come from. [`MetricSource`] answers instant queries, within the bounds
//! here; [`super::prometheus::PrometheusSource`] is the Prometheus implementation.
//!
//! Nothing a source can do wrong becomes a Pass: every failure is a [`SourceError`] or a
//! [`NoValue`] that the judgments turn into Inconclusive with the reason.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use thiserror::Error;

/// One series of an instant-query answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SourceError {
    #[error("cannot reach {address}: {message}")]
    Unreachable { address: String, message: String },
    #[error("no answer from {address} within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("{address} answered HTTP {status}: {message}")]
    Http {
        address: String,
        status: u16,
        message: String,
    },
    #[error("Prometheus refused the query ({kind}): {message}")]
    Prometheus { kind: String, message: String },
    #[error("unexpected answer: {0}")]
    Decode(String),
    #[error("bad provider configuration: {0}")]
    Config(String),
}

/// Why a query that was answered still has no usable number.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum NoValue {
    #[error("the query returned no series (no data)")]
    Empty,
    #[error("the query returned {0} series where one was expected; aggregate it (e.g. sum(...))")]
    Several(usize),
    #[error("the query returned NaN (often 0/0: no requests in the window)")]
    NaN,
    #[error("the query returned {0}")]
    Infinite(f64),
}

/// A source of instant-query answers.
pub trait MetricSource: Send + Sync {
    /// Evaluates `promql` at unix time `at`.
    fn query(
        &self,
        promql: &str,
        at: i64,
    ) -> impl Future<Output = Result<Vec<Series>, SourceError>> + Send;
}

/// The most series one answer may hold. Judgments want one series or a handful (one per pod
/// or per bucket); thousands mean a query that forgot to aggregate, and tracking each of them
/// between measurements would cost memory for nothing.
pub const MAX_SERIES: usize = 10_000;

/// The most bytes of one answer rollguard reads. An answer of [`MAX_SERIES`] series with
/// ordinary labels takes about 3 MiB; a query that selects every series of a Prometheus takes
/// hundreds, and is cut off here, before any of it is decoded.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The single finite value of an answer.
pub fn scalar(series: &[Series]) -> Result<f64, NoValue> {
    match series {
        [] => Err(NoValue::Empty),
        [one] if one.value.is_nan() => Err(NoValue::NaN),
        [one] if one.value.is_infinite() => Err(NoValue::Infinite(one.value)),
        [one] => Ok(one.value),
        many => Err(NoValue::Several(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(value: f64) -> Series {
        Series {
            labels: BTreeMap::new(),
            value,
        }
    }

    #[test]
    fn only_one_finite_value_is_a_scalar() {
        assert_eq!(scalar(&[series(0.25)]), Ok(0.25));
        assert_eq!(scalar(&[]), Err(NoValue::Empty));
        assert_eq!(scalar(&[series(f64::NAN)]), Err(NoValue::NaN));
        assert_eq!(
            scalar(&[series(f64::INFINITY)]),
            Err(NoValue::Infinite(f64::INFINITY))
        );
        assert_eq!(
            scalar(&[series(1.0), series(2.0)]),
            Err(NoValue::Several(2))
        );
        assert!(NoValue::Several(2).to_string().contains("sum("));
    }
}
