//! Where measurements come from. [`MetricSource`] answers instant queries; [`PrometheusSource`]
//! is the Prometheus implementation (prometheus-http-query over reqwest with rustls).
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

fn too_many(n: usize) -> SourceError {
    SourceError::Decode(format!(
        "the query returned {n} series, more than the {MAX_SERIES} rollguard accepts: aggregate it (e.g. sum(...) or sum by (le) (...))"
    ))
}

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

/// Credentials read from the Secrets a MetricProvider names.
#[derive(Clone, Default)]
pub struct Credentials {
    pub bearer_token: Option<String>,
    pub basic_auth: Option<(String, String)>,
    /// PEM bundle of CAs to trust.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret, not even in a debug log.
        f.debug_struct("Credentials")
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// A Prometheus HTTP API endpoint.
#[derive(Clone)]
pub struct PrometheusSource {
    address: String,
    timeout: Duration,
    client: prometheus_http_query::Client,
}

impl std::fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusSource")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PrometheusSource {
    /// A source for `address` (http or https) with a per-query `timeout`. Each query has its own
    /// connection budget, so one slow Prometheus delays only the analyses that use it.
    pub fn new(
        address: &str,
        timeout: Duration,
        credentials: &Credentials,
    ) -> Result<PrometheusSource, SourceError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &credentials.bearer_token {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|_| {
                        SourceError::Config(
                            "the bearer token has characters not allowed in a header".into(),
                        )
                    })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        if let Some((user, password)) = &credentials.basic_auth {
            let encoded = base64_encode(format!("{user}:{password}").as_bytes());
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {encoded}"))
                .map_err(|_| {
                    SourceError::Config("basic auth credentials are not valid in a header".into())
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(headers)
            .user_agent(concat!("rollguard/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &credentials.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| SourceError::Config(format!("the CA bundle is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(SourceError::Config(
                    "the CA bundle holds no PEM certificate".into(),
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if credentials.insecure_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| SourceError::Config(format!("building the HTTP client: {e}")))?;
        let client = prometheus_http_query::Client::from(http, address)
            .map_err(|e| SourceError::Config(format!("address {address:?}: {e}")))?;
        Ok(PrometheusSource {
            address: address.to_owned(),
            timeout,
            client,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn map_error(&self, e: prometheus_http_query::Error) -> SourceError {
        use prometheus_http_query::Error;
        match e {
            Error::Prometheus(p) => SourceError::Prometheus {
                kind: format!("{:?}", p.error_type()),
                message: p.message().to_owned(),
            },
            Error::Client(c) => match c.inner() {
                Some(r) if r.is_timeout() => SourceError::Timeout {
                    address: self.address.clone(),
                    timeout: self.timeout,
                },
                Some(r) if r.is_connect() => SourceError::Unreachable {
                    address: self.address.clone(),
                    message: error_chain(r),
                },
                Some(r) if r.status().is_some() => SourceError::Http {
                    address: self.address.clone(),
                    status: r.status().map_or(0, |s| s.as_u16()),
                    message: error_chain(r),
                },
                Some(r) if r.is_decode() || r.is_body() => SourceError::Decode(error_chain(r)),
                Some(r) => SourceError::Unreachable {
                    address: self.address.clone(),
                    message: error_chain(r),
                },
                None => SourceError::Decode(c.to_string()),
            },
            other => SourceError::Decode(other.to_string()),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl MetricSource for PrometheusSource {
    async fn query(&self, promql: &str, at: i64) -> Result<Vec<Series>, SourceError> {
        use prometheus_http_query::response::Data;
        let answer = self
            .client
            .query(promql)
            .at(at)
            .timeout(self.timeout.as_millis() as i64)
            .post()
            .await
            .map_err(|e| self.map_error(e))?;
        match answer.data() {
            Data::Vector(v) if v.len() > MAX_SERIES => Err(too_many(v.len())),
            Data::Vector(v) => Ok(v
                .iter()
                .map(|s| Series {
                    labels: s.metric().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    value: s.sample().value(),
                })
                .collect()),
            Data::Scalar(s) => Ok(vec![Series {
                labels: BTreeMap::new(),
                value: s.value(),
            }]),
            Data::Matrix(_) => Err(SourceError::Decode(
                "the query returned a range vector; rollguard evaluates instant queries (drop the [range] or wrap it in a function)"
                    .into(),
            )),
        }
    }
}

/// Standard base64 for the basic-auth header (no dependency for 20 lines).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn credentials_never_print_secrets() {
        let c = Credentials {
            bearer_token: Some("s3cr3t".into()),
            basic_auth: Some(("user".into(), "hunter2".into())),
            ..Credentials::default()
        };
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("s3cr3t") && !printed.contains("hunter2"),
            "{printed}"
        );
    }

    #[test]
    fn a_bad_ca_bundle_or_address_is_a_configuration_error() {
        let bad_ca = Credentials {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..Credentials::default()
        };
        let err = PrometheusSource::new("https://127.0.0.1:1", Duration::from_secs(1), &bad_ca);
        assert!(matches!(err, Err(SourceError::Config(_))), "{err:?}");
        let err =
            PrometheusSource::new("not a url", Duration::from_secs(1), &Credentials::default());
        assert!(matches!(err, Err(SourceError::Config(_))), "{err:?}");
    }
}
