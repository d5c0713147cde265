//! The Prometheus metric source against the real Prometheus of the local environment, and
//! against loopback servers that refuse or never answer: every failure is an error or a
//! `NoValue` with its reason, never a number.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rollguard::analysis::prometheus::{Credentials, PrometheusSource};
use rollguard::analysis::source::{MetricSource, NoValue, SourceError, scalar};

fn source(address: &str, timeout: Duration) -> PrometheusSource {
    PrometheusSource::new(address, timeout, &Credentials::default()).expect("valid source")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn answers_and_every_kind_of_missing_value_from_the_real_prometheus() {
    let prom = source(&prometheus_url(), Duration::from_secs(5));
    let at = now();
    let one = prom.query("vector(1)", at).await.expect("answered");
    assert_eq!(scalar(&one), Ok(1.0));
    let cases: [(&str, NoValue); 4] = [
        ("vector(0) / 0", NoValue::NaN),
        ("vector(1) / 0", NoValue::Infinite(f64::INFINITY)),
        (r#"up{job="no-such-job"}"#, NoValue::Empty),
        (
            r#"label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")"#,
            NoValue::Several(2),
        ),
    ];
    for (query, expected) in cases {
        let answer = prom.query(query, at).await.expect("answered");
        assert_eq!(scalar(&answer), Err(expected), "{query}");
    }
    let err = prom.query("sum(", at).await.expect_err("syntax error");
    assert!(
        matches!(&err, SourceError::Prometheus { kind, .. } if kind.contains("BadData")),
        "{err}"
    );
    let err = prom.query("up[1m]", at).await.expect_err("range vector");
    assert!(err.to_string().contains("range vector"), "{err}");
}

/// The cadence of errorRate and latency follows the scrape interval, read from the real
/// Prometheus's configuration (the environment scrapes every second).
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn the_scrape_interval_is_read_from_the_prometheus_configuration() {
    let prom = source(&prometheus_url(), Duration::from_secs(5));
    assert_eq!(
        prom.scrape_interval().await.expect("the configuration"),
        Duration::from_secs(1)
    );
    let elsewhere = source(
        &format!("{}/not-prometheus/", prometheus_url()),
        Duration::from_secs(5),
    );
    assert!(elsewhere.scrape_interval().await.is_err());
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_wrong_path_is_an_http_error_with_the_status() {
    let prom = source(
        &format!("{}/not-prometheus/", prometheus_url()),
        Duration::from_secs(5),
    );
    let err = prom.query("vector(1)", now()).await.expect_err("404");
    assert!(
        matches!(err, SourceError::Http { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    // Bind, note the port, and close it again: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let prom = source(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    let err = prom.query("vector(1)", now()).await.expect_err("refused");
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn a_prometheus_that_never_answers_times_out_with_the_reason() {
    let (address, server) = silent_server().await;
    let prom = source(&address, Duration::from_millis(800));
    let start = Instant::now();
    let err = prom.query("vector(1)", now()).await.expect_err("timeout");
    let took = start.elapsed();
    assert!(matches!(err, SourceError::Timeout { .. }), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "the timeout was not enforced: {took:?}"
    );
    server.abort();
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_slow_prometheus_does_not_hold_up_queries_to_another() {
    let (address, server) = silent_server().await;
    let slow = source(&address, Duration::from_secs(3));
    let fast = source(&prometheus_url(), Duration::from_secs(3));
    let start = Instant::now();
    let (slow_answer, fast_answer) = tokio::join!(slow.query("vector(1)", now()), async {
        let answer = fast.query("vector(1)", now()).await;
        (answer, start.elapsed())
    });
    let (fast_answer, fast_took) = fast_answer;
    assert_eq!(scalar(&fast_answer.expect("answered")), Ok(1.0));
    assert!(
        fast_took < Duration::from_secs(1),
        "the fast query waited: {fast_took:?}"
    );
    assert!(matches!(slow_answer, Err(SourceError::Timeout { .. })));
    server.abort();
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_providers_credentials_are_read_from_its_secrets_in_the_real_apiserver() {
    use rollguard::analysis::provider::connect;
    use rollguard::api::endpoints::MetricProvider;
    let ns = TestNamespace::create("provider").await;
    let provider: MetricProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "MetricProvider",
        "metadata": {"name": "prometheus"},
        "spec": {
            "prometheus": {
                "address": prometheus_url(), "timeout": "3s",
                "bearerToken": {"name": "prometheus-auth", "key": "token"},
            },
            "allowedNamespaces": ["*"],
        },
    }))
    .expect("provider");
    // Before the Secret exists: a configuration error that names it.
    let err = connect(&ns.client, &ns.name, &provider)
        .await
        .expect_err("no Secret yet");
    assert!(
        err.to_string().contains(&format!(
            "Secret {}/prometheus-auth does not exist",
            ns.name
        )),
        "{err}"
    );
    ns.apply(
        &core_resource("v1", "Secret", "secrets"),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "prometheus-auth"},
            "stringData": {"token": "not-checked-by-this-prometheus\n"},
        }),
    )
    .await;
    let source = connect(&ns.client, &ns.name, &provider)
        .await
        .expect("the Secret is read");
    assert_eq!(source.address(), prometheus_url());
    let answer = source.query("vector(1)", now()).await.expect("answered");
    assert_eq!(scalar(&answer), Ok(1.0));
    ns.cleanup().await;
}

#[tokio::test]
async fn a_huge_answer_is_refused_with_the_fix() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let n = rollguard::analysis::source::MAX_SERIES + 1;
    let result: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"metric": {"pod": format!("p{i}")}, "value": [1, "1"]}))
        .collect();
    let body = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
        .to_string();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = vec![0u8; 65536];
        let _ = socket.read(&mut request).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await.expect("write");
        socket.write_all(body.as_bytes()).await.expect("write");
    });
    let err = source(&address, Duration::from_secs(5))
        .query("up", now())
        .await
        .expect_err("too many series");
    assert!(matches!(err, SourceError::Decode(_)), "{err}");
    assert!(err.to_string().contains(&format!("{n} series")), "{err}");
    server.abort();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A loopback server that answers one query with `total` bytes of a never-ending vector of
/// series, announced with a content-length or not (chunked, so only reading tells the size).
async fn flooding_server(total: usize, announce: bool) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut request = vec![0u8; 65536];
        let _ = socket.read(&mut request).await;
        let head = if announce {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {total}\r\n\r\n"
            )
        } else {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".into()
        };
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let opening = r#"{"status":"success","data":{"resultType":"vector","result":["#;
        let series = r#"{"metric":{"__name__":"x","pod":"p"},"value":[1,"1"]},"#.repeat(1000);
        let mut sent = 0;
        let mut first = true;
        while sent < total {
            let piece = if first {
                format!("{opening}{series}")
            } else {
                series.clone()
            };
            first = false;
            let framed = if announce {
                piece.into_bytes()
            } else {
                format!("{:x}\r\n{piece}\r\n", piece.len()).into_bytes()
            };
            // The client hangs up once it has read its cap; that ends the flood.
            if socket.write_all(&framed).await.is_err() {
                return;
            }
            sent += framed.len();
        }
    });
    (address, server)
}

#[tokio::test]
async fn a_100_mb_answer_is_cut_off_while_streaming() {
    for announce in [false, true] {
        let (address, server) = flooding_server(100 << 20, announce).await;
        let before = rss_kib();
        let err = source(&address, Duration::from_secs(20))
            .query("{__name__=~\".+\"}", now())
            .await
            .expect_err("too big");
        let grew_mib = rss_kib().saturating_sub(before) as f64 / 1024.0;
        println!(
            "100 MB answer (content-length announced: {announce}): RSS grew {grew_mib:.1} MiB; {err}"
        );
        assert!(err.to_string().contains("larger than 4 MiB"), "{err}");
        assert!(grew_mib < 20.0, "RSS grew {grew_mib:.1} MiB");
        server.abort();
    }
}
