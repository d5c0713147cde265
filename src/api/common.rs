//! Field types shared by the rollguard.dev kinds.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// How loud an incident is: the receivers map it to their own levels.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    #[default]
    Error,
    Warning,
    Info,
}

/// A duration as Kubernetes users write it: `30s`, `5m`, `1h30m`, `250ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

impl Duration {
    pub fn new(text: &str) -> Duration {
        Duration(text.to_owned())
    }

    pub fn parse(&self) -> Result<std::time::Duration, humantime::DurationError> {
        humantime::parse_duration(&self.0)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

/// A key of a Secret in the controller's own namespace. Admin-owned kinds name Secrets this way,
/// so the controller needs `get` on Secrets in one namespace only, never a cluster-wide list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace rollguard runs in.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The standard Kubernetes condition.
pub type Condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_written() {
        assert_eq!(
            Duration::new("1m30s").parse().ok(),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            Duration::new("250ms").parse().ok(),
            Some(std::time::Duration::from_millis(250))
        );
        assert!(Duration::new("soon").parse().is_err());
    }
}

/// The most bytes of text from outside (an apiserver or Prometheus error, a receiver's answer)
/// that rollguard copies into a status field, an Event or an incident.
pub const MESSAGE_LIMIT: usize = 1024;

/// `text` cut to [`MESSAGE_LIMIT`] bytes at a character boundary, saying how much was cut.
pub fn bounded(text: &str) -> String {
    if text.len() <= MESSAGE_LIMIT {
        return text.to_owned();
    }
    let mut end = MESSAGE_LIMIT - 40;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn long_outside_text_is_cut_at_a_char_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(50_000);
        let cut = bounded(&long);
        assert!(cut.len() <= MESSAGE_LIMIT, "{}", cut.len());
        assert!(cut.ends_with("more bytes cut)"), "{cut}");
        let exact = "x".repeat(MESSAGE_LIMIT);
        assert_eq!(bounded(&exact), exact);
    }
}
