//! Reading backend weights out of the route objects rollguard steers.
//!
//! The objects are read as JSON (`DynamicObject`), not as generated types: every mesh-type crate
//! trails kube by a major version, and rollguard only ever touches the weight fields. Each weight
//! carries its JSON pointer, which is what a guarded JSON patch writes to.

use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::api::rollout::TrafficRouter;

/// A kind of route object whose backend weights split traffic between Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Gateway API `HTTPRoute`: `spec.rules[*].backendRefs[*].weight`.
    HttpRoute,
    /// Istio `VirtualService`: `spec.http[*].route[*].weight`.
    VirtualService,
    /// SMI `TrafficSplit`: `spec.backends[*].weight`.
    TrafficSplit,
}

/// What rollguard knows of one kind of route object: where it lives in the API, which route the
/// Rollout names for it, and how to read its weighted backends. One file per kind implements it.
pub trait RouteType: Sync {
    fn gvk(&self) -> GroupVersionKind;
    fn plural(&self) -> &'static str;
    /// The name of the route of this kind that `spec.trafficRouter` names, if any.
    fn named_in(&self, router: &TrafficRouter) -> Option<String>;
    /// The rules of the object's `spec` and the weighted Service backends of each.
    fn rules(&self, spec: &Value) -> Result<Vec<RouteRule>, RouteError>;
    /// Weights are relative to the rule's total (SMI) rather than percentages.
    fn relative_weights(&self) -> bool {
        false
    }
}

impl std::fmt::Display for RouteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.gvk().kind)
    }
}

/// One rule of a route: traffic matching it is split across `backends` by weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// The rule's name, where the kind has one (Istio http routes).
    pub name: Option<String>,
    pub backends: Vec<Backend>,
}

impl RouteRule {
    pub fn total_weight(&self) -> u64 {
        self.backends.iter().map(|b| u64::from(b.weight)).sum()
    }

    /// Each backend's Service and weight, for tests to compare.
    #[cfg(test)]
    pub fn service_weights(&self) -> Vec<(String, u32)> {
        self.backends
            .iter()
            .map(|b| (b.service.clone(), b.weight))
            .collect()
    }
}

/// A Service that a route rule sends a share of its traffic to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub service: String,
    /// Set when the route names a namespace other than its own.
    pub namespace: Option<String>,
    /// Istio DestinationRule subset, when the destination names one.
    pub subset: Option<String>,
    pub weight: u32,
    /// JSON pointer of the weight field, for a patch that writes only the weight.
    pub weight_path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("field {path} is missing")]
    Missing { path: String },
    #[error("field {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

pub(super) fn array<'a>(
    value: &'a Value,
    key: &str,
    path: &str,
) -> Result<&'a [Value], RouteError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(RouteError::Invalid {
            path: format!("{path}.{key}"),
            reason: "expected a list".into(),
        }),
    }
}

pub(super) fn string_field(value: &Value, key: &str, path: &str) -> Result<String, RouteError> {
    match value.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(RouteError::Missing {
            path: format!("{path}.{key}"),
        }),
        Some(_) => Err(RouteError::Invalid {
            path: format!("{path}.{key}"),
            reason: "expected a non-empty string".into(),
        }),
    }
}

pub(super) fn optional_string(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A weight as the API stores it: an integer, or (SMI v1alpha1) an integer in a string.
pub(super) fn weight_field(value: &Value, path: &str, default: u32) -> Result<u32, RouteError> {
    let invalid = |reason: &str| RouteError::Invalid {
        path: format!("{path}.weight"),
        reason: reason.into(),
    };
    match value.get("weight") {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| invalid("expected a non-negative integer")),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| invalid("expected a non-negative integer")),
        Some(_) => Err(invalid("expected a non-negative integer")),
    }
}

/// Split a mesh host (`svc`, `svc.ns`, `svc.ns.svc.cluster.local`) into Service and namespace.
pub fn split_mesh_host(host: &str) -> (String, Option<String>) {
    let mut labels = host.split('.');
    let service = labels.next().unwrap_or_default().to_owned();
    let namespace = labels.next().filter(|ns| !ns.is_empty()).map(str::to_owned);
    (service, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn malformed_routes_name_the_field() {
        let cases = [
            (RouteKind::HttpRoute, json!({}), "field spec is missing"),
            (
                RouteKind::HttpRoute,
                json!({"spec": {"rules": [{"backendRefs": [{"name": "a", "weight": -1}]}]}}),
                "field spec.rules[0].backendRefs[0].weight is invalid: expected a non-negative integer",
            ),
            (
                RouteKind::HttpRoute,
                json!({"spec": {"rules": {"backendRefs": []}}}),
                "field spec.rules is invalid: expected a list",
            ),
            (
                RouteKind::VirtualService,
                json!({"spec": {"http": [{"route": [{"weight": 5}]}]}}),
                "field spec.http[0].route[0].destination is missing",
            ),
            (
                RouteKind::TrafficSplit,
                json!({"spec": {"backends": [{"weight": 5}]}}),
                "field spec.backends[0].service is missing",
            ),
            (
                RouteKind::TrafficSplit,
                json!({"spec": {"backends": [{"service": "a", "weight": "500m"}]}}),
                "field spec.backends[0].weight is invalid: expected a non-negative integer",
            ),
        ];
        for (kind, object, message) in cases {
            let err = kind.rules(&object).expect_err(message);
            assert_eq!(err.to_string(), message, "{kind}");
        }
    }

    #[test]
    fn mesh_hosts_split_into_service_and_namespace() {
        assert_eq!(split_mesh_host("a"), ("a".into(), None));
        assert_eq!(split_mesh_host("a.b"), ("a".into(), Some("b".into())));
        assert_eq!(
            split_mesh_host("a.b.svc.cluster.local"),
            ("a".into(), Some("b".into()))
        );
    }

    #[test]
    fn api_resources_match_the_served_versions() {
        let ar = RouteKind::TrafficSplit.api_resource();
        assert_eq!(ar.api_version, "split.smi-spec.io/v1alpha4");
        assert_eq!(ar.plural, "trafficsplits");
        assert_eq!(
            RouteKind::HttpRoute.api_resource().api_version,
            "gateway.networking.k8s.io/v1"
        );
    }
}
