//! From a `MetricProvider` to a ready [`PrometheusSource`]: who may use it, and its credentials
//! read from Secrets in the controller's namespace.
//!
//! The pure part ([`referenced_secrets`], [`credentials`], [`allows`]) works on plain data; the
//! thin I/O part ([`connect`]) reads the Secrets with the controller's client.

use std::collections::BTreeSet;

use super::prometheus::{Credentials, PrometheusSource};
use super::source::SourceError;
use crate::api::common::SecretKeyRef;
use crate::api::endpoints::{MetricProvider, MetricProviderSpec};
use crate::secrets::{SecretData, read_secrets};

/// Whether templates in `namespace` may use the provider.
pub fn allows(spec: &MetricProviderSpec, namespace: &str) -> bool {
    crate::api::endpoints::namespace_allowed(&spec.allowed_namespaces, namespace)
}

/// The names of the Secrets a provider's credentials come from.
pub fn referenced_secrets(spec: &MetricProviderSpec) -> BTreeSet<String> {
    let p = &spec.prometheus;
    p.bearer_token
        .iter()
        .chain(p.basic_auth.iter().flat_map(|b| [&b.username, &b.password]))
        .chain(p.ca_bundle.iter())
        .map(|r| r.name.clone())
        .collect()
}

fn value(secrets: &SecretData, namespace: &str, r: &SecretKeyRef) -> Result<Vec<u8>, SourceError> {
    let secret = secrets.get(&r.name).ok_or_else(|| {
        SourceError::Config(format!("Secret {namespace}/{} does not exist", r.name))
    })?;
    secret.get(&r.key).cloned().ok_or_else(|| {
        SourceError::Config(format!(
            "Secret {namespace}/{} has no key {:?} (it has: {})",
            r.name,
            r.key,
            secret.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

fn text(secrets: &SecretData, namespace: &str, r: &SecretKeyRef) -> Result<String, SourceError> {
    let bytes = value(secrets, namespace, r)?;
    String::from_utf8(bytes).map_err(|_| {
        SourceError::Config(format!(
            "Secret {namespace}/{} key {:?} is not UTF-8 text",
            r.name, r.key
        ))
    })
}

/// The credentials of a provider from the Secrets it names (read from `namespace`).
pub fn credentials(
    spec: &MetricProviderSpec,
    secrets: &SecretData,
    namespace: &str,
) -> Result<Credentials, SourceError> {
    let p = &spec.prometheus;
    let bearer_token = p
        .bearer_token
        .as_ref()
        .map(|r| text(secrets, namespace, r).map(|t| t.trim().to_owned()))
        .transpose()?;
    let basic_auth = p
        .basic_auth
        .as_ref()
        .map(|b| {
            Ok::<_, SourceError>((
                text(secrets, namespace, &b.username)?.trim().to_owned(),
                text(secrets, namespace, &b.password)?,
            ))
        })
        .transpose()?;
    let ca_pem = p
        .ca_bundle
        .as_ref()
        .map(|r| value(secrets, namespace, r))
        .transpose()?;
    Ok(Credentials {
        bearer_token,
        basic_auth,
        ca_pem,
        insecure_skip_verify: p.insecure_skip_verify,
    })
}

/// Reads the provider's Secrets from `namespace` (the controller's) and builds its source.
pub async fn connect(
    client: &kube::Client,
    namespace: &str,
    provider: &MetricProvider,
) -> Result<PrometheusSource, SourceError> {
    let secrets = read_secrets(client, namespace, referenced_secrets(&provider.spec))
        .await
        .map_err(|e| SourceError::Config(e.to_string()))?;
    let creds = credentials(&provider.spec, &secrets, namespace)?;
    let timeout = provider.spec.prometheus.timeout.parse().map_err(|e| {
        SourceError::Config(format!(
            "timeout {:?}: {e}",
            provider.spec.prometheus.timeout.0
        ))
    })?;
    PrometheusSource::new(&provider.spec.prometheus.address, timeout, &creds)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::secrets::tests::secrets;

    fn spec(prometheus: serde_json::Value) -> MetricProviderSpec {
        serde_json::from_value(serde_json::json!({
            "prometheus": prometheus,
            "allowedNamespaces": ["shop"],
        }))
        .expect("spec")
    }

    #[test]
    fn namespaces_must_be_allowed() {
        let mut s = spec(serde_json::json!({"address": "http://p:9090"}));
        assert!(allows(&s, "shop"));
        assert!(!allows(&s, "other"));
        s.allowed_namespaces = vec!["*".into()];
        assert!(allows(&s, "other"));
    }

    #[test]
    fn credentials_come_from_the_named_keys() {
        let s = spec(serde_json::json!({
            "address": "https://p:9090",
            "basicAuth": {"username": {"name": "prom", "key": "user"}, "password": {"name": "prom", "key": "pass"}},
            "caBundle": {"name": "ca", "key": "ca.crt"},
        }));
        assert_eq!(
            referenced_secrets(&s),
            BTreeSet::from(["ca".to_owned(), "prom".to_owned()])
        );
        let c = credentials(
            &s,
            &secrets(&[
                ("prom", "user", "reader\n"),
                ("prom", "pass", "p a s s"),
                ("ca", "ca.crt", "PEM"),
            ]),
            "rollguard",
        )
        .expect("credentials");
        assert_eq!(
            c.basic_auth,
            Some(("reader".to_owned(), "p a s s".to_owned()))
        );
        assert_eq!(c.ca_pem.as_deref(), Some(b"PEM".as_slice()));
        assert_eq!(c.bearer_token, None);
    }

    #[test]
    fn a_missing_secret_or_key_is_named() {
        let s = spec(
            serde_json::json!({"address": "http://p:9090", "bearerToken": {"name": "tok", "key": "token"}}),
        );
        let e = credentials(&s, &SecretData::new(), "rollguard").expect_err("no secret");
        assert!(
            e.to_string()
                .contains("Secret rollguard/tok does not exist"),
            "{e}"
        );
        let e =
            credentials(&s, &secrets(&[("tok", "other", "x")]), "rollguard").expect_err("no key");
        assert!(
            e.to_string().contains("no key \"token\" (it has: other)"),
            "{e}"
        );
        let c = credentials(&s, &secrets(&[("tok", "token", "abc\n")]), "rollguard").expect("ok");
        assert_eq!(c.bearer_token.as_deref(), Some("abc"));
    }
}
