//! [`PrometheusSource`]: the Prometheus HTTP API's instant query over reqwest with rustls, its
//! answers read within [`MAX_ANSWER_BYTES`] and [`MAX_SERIES`] and decoded without trusting them,
//! and the scrape interval its configuration declares.

use std::collections::BTreeMap;
use std::time::Duration;

use super::source::{MAX_ANSWER_BYTES, MAX_SERIES, MetricSource, Series, SourceError};

fn too_big(address: &str) -> SourceError {
    SourceError::Decode(format!(
        "the answer from {address} is larger than {} MiB, more than rollguard reads: aggregate the query (e.g. sum(...))",
        MAX_ANSWER_BYTES >> 20
    ))
}

fn too_many(n: usize) -> SourceError {
    SourceError::Decode(format!(
        "the query returned {n} series, more than the {MAX_SERIES} rollguard accepts: aggregate it (e.g. sum(...) or sum by (le) (...))"
    ))
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
    query_url: reqwest::Url,
    http: reqwest::Client,
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
            // Like the receivers' client: an address answers itself, or fails.
            .redirect(reqwest::redirect::Policy::none())
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
        let query_url = reqwest::Url::parse(address)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .and_then(|u| {
                u.join(&format!("{}/api/v1/query", u.path().trim_end_matches('/')))
                    .ok()
            })
            .ok_or_else(|| {
                SourceError::Config(format!("address {address:?} is not an http(s) URL"))
            })?;
        Ok(PrometheusSource {
            address: address.to_owned(),
            timeout,
            query_url,
            http,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// How often this Prometheus scrapes by default: `global.scrape_interval` of the
    /// configuration it serves on `/api/v1/status/config` (Prometheus's own default, 1m, when
    /// the configuration does not set it).
    pub async fn scrape_interval(&self) -> Result<Duration, SourceError> {
        let url = self
            .query_url
            .join("status/config")
            .map_err(|e| SourceError::Config(format!("the config URL: {e}")))?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.map_error(e))?;
        let status = response.status().as_u16();
        let body = self.read_capped(response).await?;
        if status != 200 {
            return Err(SourceError::Decode(format!(
                "/api/v1/status/config answered HTTP {status}"
            )));
        }
        scrape_interval_of(&body)
    }

    fn map_error(&self, e: reqwest::Error) -> SourceError {
        if e.is_timeout() {
            SourceError::Timeout {
                address: self.address.clone(),
                timeout: self.timeout,
            }
        } else if e.is_body() || e.is_decode() {
            SourceError::Decode(error_chain(&e))
        } else {
            SourceError::Unreachable {
                address: self.address.clone(),
                message: error_chain(&e),
            }
        }
    }

    /// The answer's body, read chunk by chunk and refused once it passes the cap.
    async fn read_capped(&self, mut response: reqwest::Response) -> Result<Vec<u8>, SourceError> {
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_big(&self.address));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.map_error(e))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_big(&self.address));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// `global.scrape_interval` from the body of `/api/v1/status/config`.
pub fn scrape_interval_of(body: &[u8]) -> Result<Duration, SourceError> {
    #[derive(serde::Deserialize)]
    struct Config {
        data: ConfigData,
    }
    #[derive(serde::Deserialize)]
    struct ConfigData {
        yaml: String,
    }
    #[derive(serde::Deserialize, Default)]
    struct Yaml {
        #[serde(default)]
        global: Global,
    }
    #[derive(serde::Deserialize, Default)]
    struct Global {
        #[serde(default)]
        scrape_interval: Option<String>,
    }
    let bad = |why: String| SourceError::Decode(format!("the Prometheus configuration: {why}"));
    let config: Config = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let yaml: Yaml = serde_saphyr::from_str(&config.data.yaml).map_err(|e| bad(e.to_string()))?;
    let text = yaml.global.scrape_interval.unwrap_or_else(|| "1m".into());
    humantime::parse_duration(&text)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| bad(format!("scrape_interval {text:?} is not a duration")))
}

/// An instant query's answer as Prometheus's HTTP API writes it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "resultType", content = "result")]
enum AnswerData {
    Vector(SeriesList),
    Scalar((f64, String)),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(serde::Deserialize)]
struct RawSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// The series of a vector, kept up to [`MAX_SERIES`] and counted beyond, so that an answer of
/// a million series is refused with its size without a million maps being built.
struct SeriesList {
    kept: Vec<RawSeries>,
    total: usize,
}

impl<'de> serde::Deserialize<'de> for SeriesList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SeriesList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of series")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SeriesList, A::Error> {
                let mut list = SeriesList {
                    kept: Vec::new(),
                    total: 0,
                };
                loop {
                    if list.total < MAX_SERIES {
                        match seq.next_element::<RawSeries>()? {
                            Some(s) => list.kept.push(s),
                            None => break,
                        }
                    } else if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                        break;
                    }
                    list.total += 1;
                }
                Ok(list)
            }
        }
        d.deserialize_seq(Visitor)
    }
}

/// Prometheus writes sample values as strings: "1.5", "NaN", "+Inf".
fn sample(text: &str) -> Result<f64, SourceError> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse()
            .map_err(|_| SourceError::Decode(format!("the sample value {text:?} is not a number"))),
    }
}

/// `bad_data` → `BadData`: Prometheus's error types as the messages name them.
fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// Decodes an answer that was read whole and within the cap.
fn decode(address: &str, status: u16, body: &[u8]) -> Result<Vec<Series>, SourceError> {
    let answer = match serde_json::from_slice::<Answer>(body) {
        Ok(a) => a,
        Err(_) if !(200..300).contains(&status) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
            return Err(SourceError::Http {
                address: address.to_owned(),
                status,
                message: text.trim().to_owned(),
            });
        }
        Err(e) => return Err(SourceError::Decode(format!("not a Prometheus answer: {e}"))),
    };
    if answer.status != "success" {
        return Err(SourceError::Prometheus {
            kind: camel(answer.error_type.as_deref().unwrap_or("unknown")),
            message: crate::api::common::bounded(answer.error.as_deref().unwrap_or("")),
        });
    }
    match answer.data {
        Some(AnswerData::Vector(list)) if list.total > MAX_SERIES => Err(too_many(list.total)),
        Some(AnswerData::Vector(list)) => list
            .kept
            .into_iter()
            .map(|s| {
                Ok(Series {
                    labels: s.metric,
                    value: sample(&s.value.1)?,
                })
            })
            .collect(),
        Some(AnswerData::Scalar((_, v))) => Ok(vec![Series {
            labels: BTreeMap::new(),
            value: sample(&v)?,
        }]),
        Some(AnswerData::Matrix(_)) => Err(SourceError::Decode(
            "the query returned a range vector; rollguard evaluates instant queries (drop the [range] or wrap it in a function)"
                .into(),
        )),
        Some(AnswerData::String(_)) => Err(SourceError::Decode(
            "the query returned a string; rollguard needs a number".into(),
        )),
        None => Err(SourceError::Decode("the answer has no data".into())),
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
        let at = at.to_string();
        let timeout = format!("{}ms", self.timeout.as_millis());
        let response = self
            .http
            .post(self.query_url.clone())
            .form(&[("query", promql), ("time", &at), ("timeout", &timeout)])
            .send()
            .await
            .map_err(|e| self.map_error(e))?;
        let status = response.status().as_u16();
        let body = self.read_capped(response).await?;
        decode(&self.address, status, &body)
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

    #[test]
    fn answers_decode_as_prometheus_writes_them() {
        let ok = |body: &str| decode("p", 200, body.as_bytes());
        let v = ok(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a"},"value":[1.5,"0.25"]},{"metric":{},"value":[1.5,"NaN"]},
            {"metric":{},"value":[1.5,"+Inf"]}]}}"#,
        )
        .expect("vector");
        assert_eq!(v[0].labels.get("pod").map(String::as_str), Some("a"));
        assert_eq!(v[0].value, 0.25);
        assert!(v[1].value.is_nan() && v[2].value == f64::INFINITY);
        let s = ok(r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"2"]}}"#);
        assert_eq!(s.expect("scalar")[0].value, 2.0);
        let m = ok(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#);
        assert!(m.expect_err("matrix").to_string().contains("range vector"));
        let bad = decode(
            "p",
            400,
            br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
        );
        assert_eq!(
            bad,
            Err(SourceError::Prometheus {
                kind: "BadData".into(),
                message: "parse error".into()
            })
        );
        let huge = format!(
            r#"{{"status":"error","errorType":"execution","error":"{}"}}"#,
            "x".repeat(100_000)
        );
        let Err(SourceError::Prometheus { message, .. }) = decode("p", 422, huge.as_bytes()) else {
            panic!("an error answer")
        };
        assert!(message.len() <= crate::api::common::MESSAGE_LIMIT);
        assert!(matches!(
            decode("p", 404, b"404 page not found"),
            Err(SourceError::Http { status: 404, .. })
        ));
        assert!(matches!(
            decode("p", 200, b"<html>"),
            Err(SourceError::Decode(_))
        ));
    }

    #[test]
    fn series_beyond_the_cap_are_counted_not_kept() {
        let n = MAX_SERIES + 5;
        let one = r#"{"metric":{"pod":"p"},"value":[1,"1"]}"#;
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            vec![one; n].join(",")
        );
        let err = decode("p", 200, body.as_bytes()).expect_err("too many");
        assert!(err.to_string().contains(&format!("{n} series")), "{err}");
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

    #[test]
    fn the_scrape_interval_comes_from_the_global_section() {
        let body = |yaml: &str| {
            serde_json::json!({"status": "success", "data": {"yaml": yaml}}).to_string()
        };
        let config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 15s\nscrape_configs:\n- job_name: sim\n  scrape_interval: 5s\n";
        assert_eq!(
            scrape_interval_of(body(config).as_bytes()),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            scrape_interval_of(body("global:\n  scrape_interval: 1m30s\n").as_bytes()),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            scrape_interval_of(body("scrape_configs: []\n").as_bytes()),
            Ok(Duration::from_secs(60)),
            "Prometheus's own default"
        );
        for bad in [
            body("global:\n  scrape_interval: often\n"),
            body("global:\n  scrape_interval: 0s\n"),
            body("global: [unclosed\n"),
            "not json".to_owned(),
        ] {
            assert!(
                matches!(
                    scrape_interval_of(bad.as_bytes()),
                    Err(SourceError::Decode(_))
                ),
                "{bad}"
            );
        }
    }
}
