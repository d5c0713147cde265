//! The one piece of escalation that does I/O: POST a rendered request and classify the answer.

use std::time::Duration;

use super::receiver::{HttpRequest, Outcome, Receiver};

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
pub async fn post(http: &reqwest::Client, receiver: &dyn Receiver, req: HttpRequest) -> Outcome {
    let mut builder = http.post(&req.url).body(req.body);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    match builder.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let outcome = receiver.outcome(status);
            if !matches!(outcome, Outcome::Delivered) {
                let body = response.text().await.unwrap_or_default();
                tracing::warn!(
                    receiver = receiver.name(),
                    status,
                    body = %body.chars().take(500).collect::<String>(),
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
            tracing::warn!(receiver = receiver.name(), error = %e, "escalation not sent");
            Outcome::Retry(format!(
                "Receiver {}: {}: {why}; retrying",
                receiver.name(),
                receiver.endpoint_field()
            ))
        }
    }
}
