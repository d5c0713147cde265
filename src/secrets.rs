//! Reading the controller's own Secrets: the credentials of metric providers and receivers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// Secret data by Secret name, then key.
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// A Secret that could not be read for a reason other than not existing.
#[derive(Debug, thiserror::Error)]
#[error("reading Secret {namespace}/{name}: {source}")]
pub struct ReadError {
    pub namespace: String,
    pub name: String,
    pub source: kube::Error,
}

/// Reads the named Secrets from `namespace` (the controller's). A Secret that does not exist is
/// left out, for the caller to name with the field that refers to it.
pub async fn read_secrets(
    client: &kube::Client,
    namespace: &str,
    names: impl IntoIterator<Item = String>,
) -> Result<SecretData, ReadError> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let mut secrets = SecretData::new();
    for name in names {
        match api.get_opt(&name).await {
            Ok(Some(secret)) => {
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                secrets.insert(name, data);
            }
            Ok(None) => {}
            Err(source) => {
                return Err(ReadError {
                    namespace: namespace.to_owned(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(secrets)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Secret data from `(secret, key, value)` triples.
    pub(crate) fn secrets(entries: &[(&str, &str, &str)]) -> SecretData {
        let mut out = SecretData::new();
        for (name, key, value) in entries {
            out.entry((*name).to_owned())
                .or_default()
                .insert((*key).to_owned(), value.as_bytes().to_vec());
        }
        out
    }
}
