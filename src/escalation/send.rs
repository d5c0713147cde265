//! The one piece of escalation that does I/O: POST a rendered request and classify the answer.

use std::time::Duration;

use super::receiver::{DeliveryResult, HttpRequest, Notifier};

/// How long one send may take before it counts as a network failure (and is retried).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client for receivers: rustls, a timeout, no redirects (a receiver that redirects is
/// misconfigured, and following it could leak the body elsewhere).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rollguard/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Sends `req` for `receiver` and says how it went. Response bodies are logged, never copied
/// into status.
pub async fn post(
    http: &reqwest::Client,
    receiver: &dyn Notifier,
    req: HttpRequest,
) -> DeliveryResult {
    let mut builder = http.post(&req.url).body(req.body);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    match builder.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let outcome = receiver.outcome(status);
            if !matches!(outcome, DeliveryResult::Delivered) {
                let body = first_bytes(response, 500).await;
                tracing::warn!(
                    receiver = receiver.name(),
                    status,
                    body = %body,
                    "escalation not accepted"
                );
            }
            outcome
        }
        Err(e) => {
            let why = if e.is_timeout() {
                format!("no answer within {}s", SEND_TIMEOUT.as_secs())
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "request failed".to_owned()
            };
            tracing::warn!(receiver = receiver.name(), error = %loggable(e), "escalation not sent");
            DeliveryResult::Retry(format!(
                "Receiver {}: {}: {why}; retrying",
                receiver.name(),
                receiver.endpoint_field()
            ))
        }
    }
}

/// The start of an answer's body, for the log: a receiver's answer is read no further.
async fn first_bytes(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(limit);
    String::from_utf8_lossy(&body).into_owned()
}

/// A send error as it may be logged: a receiver's URL is its credential (Slack's webhook, a
/// signed webhook's path), so it never appears, only the cause.
fn loggable(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_send_error_never_carries_the_receivers_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("http://127.0.0.1:{port}/services/T000/B000/SECRETTOKEN");
        let e = client()
            .post(&url)
            .send()
            .await
            .expect_err("nothing listens");
        assert!(
            e.to_string().contains("SECRETTOKEN"),
            "reqwest names the URL"
        );
        let logged = loggable(e);
        assert!(!logged.contains("SECRETTOKEN"), "{logged}");
        assert!(!logged.contains("/services/"), "{logged}");
    }
}
