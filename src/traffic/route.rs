//! Reading backend weights out of the route objects rollguard steers.
//!
//! The objects are read as JSON (`DynamicObject`), not as generated types: every mesh-type crate
//! trails kube by a major version, and rollguard only ever touches the weight fields. Each weight
//! carries its JSON pointer, which is what a guarded JSON patch writes to.

use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

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

impl RouteKind {
    pub const ALL: [RouteKind; 3] = [
        RouteKind::HttpRoute,
        RouteKind::VirtualService,
        RouteKind::TrafficSplit,
    ];

    pub fn gvk(self) -> GroupVersionKind {
        match self {
            RouteKind::HttpRoute => {
                GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute")
            }
            RouteKind::VirtualService => {
                GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService")
            }
            RouteKind::TrafficSplit => {
                GroupVersionKind::gvk("split.smi-spec.io", "v1alpha4", "TrafficSplit")
            }
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            RouteKind::HttpRoute => "httproutes",
            RouteKind::VirtualService => "virtualservices",
            RouteKind::TrafficSplit => "trafficsplits",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(&self.gvk(), self.plural())
    }

    /// The rules of a route object and the weighted Service backends of each.
    ///
    /// `object` is the whole object as JSON. Backends that are not core Services (a Gateway API
    /// backendRef to another kind) are left out: no weight rollguard writes applies to them.
    pub fn rules(self, object: &Value) -> Result<Vec<RouteRule>, RouteError> {
        let spec = object.get("spec").ok_or(RouteError::Missing {
            path: "spec".into(),
        })?;
        match self {
            RouteKind::HttpRoute => http_route_rules(spec),
            RouteKind::VirtualService => virtual_service_rules(spec),
            RouteKind::TrafficSplit => traffic_split_rules(spec).map(|rule| vec![rule]),
        }
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

fn array<'a>(value: &'a Value, key: &str, path: &str) -> Result<&'a [Value], RouteError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(RouteError::Invalid {
            path: format!("{path}.{key}"),
            reason: "expected a list".into(),
        }),
    }
}

fn string_field(value: &Value, key: &str, path: &str) -> Result<String, RouteError> {
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

fn optional_string(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A weight as the API stores it: an integer, or (SMI v1alpha1) an integer in a string.
fn weight_field(value: &Value, path: &str, default: u32) -> Result<u32, RouteError> {
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

fn http_route_rules(spec: &Value) -> Result<Vec<RouteRule>, RouteError> {
    let mut rules = Vec::new();
    for (i, rule) in array(spec, "rules", "spec")?.iter().enumerate() {
        let rule_path = format!("spec.rules[{i}]");
        let mut backends = Vec::new();
        for (j, backend) in array(rule, "backendRefs", &rule_path)?.iter().enumerate() {
            let path = format!("{rule_path}.backendRefs[{j}]");
            let group = optional_string(backend, "group").unwrap_or_default();
            let kind = optional_string(backend, "kind").unwrap_or_else(|| "Service".into());
            if !group.is_empty() || kind != "Service" {
                continue;
            }
            backends.push(Backend {
                service: string_field(backend, "name", &path)?,
                namespace: optional_string(backend, "namespace"),
                subset: None,
                // Gateway API: an unset weight means 1.
                weight: weight_field(backend, &path, 1)?,
                weight_path: format!("/spec/rules/{i}/backendRefs/{j}/weight"),
            });
        }
        rules.push(RouteRule {
            name: None,
            backends,
        });
    }
    Ok(rules)
}

fn virtual_service_rules(spec: &Value) -> Result<Vec<RouteRule>, RouteError> {
    let mut rules = Vec::new();
    for (i, http) in array(spec, "http", "spec")?.iter().enumerate() {
        let rule_path = format!("spec.http[{i}]");
        let routes = array(http, "route", &rule_path)?;
        let mut backends = Vec::new();
        for (j, route) in routes.iter().enumerate() {
            let path = format!("{rule_path}.route[{j}]");
            let destination = route
                .get("destination")
                .ok_or_else(|| RouteError::Missing {
                    path: format!("{path}.destination"),
                })?;
            let host = string_field(destination, "host", &format!("{path}.destination"))?;
            let (service, namespace) = split_mesh_host(&host);
            // Istio: a lone destination takes all traffic; otherwise an unset weight is 0.
            let default = if routes.len() == 1 { 100 } else { 0 };
            backends.push(Backend {
                service,
                namespace,
                subset: optional_string(destination, "subset"),
                weight: weight_field(route, &path, default)?,
                weight_path: format!("/spec/http/{i}/route/{j}/weight"),
            });
        }
        rules.push(RouteRule {
            name: optional_string(http, "name"),
            backends,
        });
    }
    Ok(rules)
}

fn traffic_split_rules(spec: &Value) -> Result<RouteRule, RouteError> {
    let mut backends = Vec::new();
    for (j, backend) in array(spec, "backends", "spec")?.iter().enumerate() {
        let path = format!("spec.backends[{j}]");
        backends.push(Backend {
            service: string_field(backend, "service", &path)?,
            namespace: None,
            subset: None,
            weight: weight_field(backend, &path, 0)?,
            weight_path: format!("/spec/backends/{j}/weight"),
        });
    }
    Ok(RouteRule {
        name: None,
        backends,
    })
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

    fn weights(rules: &[RouteRule]) -> Vec<Vec<(String, u32)>> {
        rules
            .iter()
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| (b.service.clone(), b.weight))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn http_route_weights_paths_and_defaults() {
        let route = json!({"spec": {"rules": [
            {"backendRefs": [
                {"name": "checkout-stable", "port": 80, "weight": 90},
                {"name": "checkout-canary", "port": 80, "weight": 10},
                {"name": "other", "group": "example.com", "kind": "Bucket"},
            ]},
            {"backendRefs": [{"name": "checkout-stable", "namespace": "shop"}]},
        ]}});
        let rules = RouteKind::HttpRoute.rules(&route).expect("valid route");
        assert_eq!(
            weights(&rules),
            vec![
                vec![
                    ("checkout-stable".into(), 90),
                    ("checkout-canary".into(), 10)
                ],
                vec![("checkout-stable".into(), 1)],
            ]
        );
        assert_eq!(
            rules[0].backends[1].weight_path,
            "/spec/rules/0/backendRefs/1/weight"
        );
        assert_eq!(rules[1].backends[0].namespace.as_deref(), Some("shop"));
        assert_eq!(rules[0].total_weight(), 100);
    }

    #[test]
    fn virtual_service_hosts_subsets_and_default_weights() {
        let vs = json!({"spec": {"http": [
            {"route": [
                {"destination": {"host": "checkout-stable"}, "weight": 80},
                {"destination": {"host": "checkout-canary.shop.svc.cluster.local", "subset": "v2"}, "weight": 20},
                {"destination": {"host": "checkout-baseline"}},
            ]},
            {"route": [{"destination": {"host": "checkout-stable"}}]},
        ]}});
        let rules = RouteKind::VirtualService
            .rules(&vs)
            .expect("valid virtual service");
        assert_eq!(
            weights(&rules),
            vec![
                vec![
                    ("checkout-stable".into(), 80),
                    ("checkout-canary".into(), 20),
                    ("checkout-baseline".into(), 0)
                ],
                vec![("checkout-stable".into(), 100)],
            ]
        );
        let canary = &rules[0].backends[1];
        assert_eq!(canary.namespace.as_deref(), Some("shop"));
        assert_eq!(canary.subset.as_deref(), Some("v2"));
        assert_eq!(canary.weight_path, "/spec/http/0/route/1/weight");
    }

    #[test]
    fn traffic_split_accepts_integer_and_string_weights() {
        let ts = json!({"spec": {"service": "checkout", "backends": [
            {"service": "checkout-stable", "weight": 900},
            {"service": "checkout-canary", "weight": "100"},
        ]}});
        let rules = RouteKind::TrafficSplit
            .rules(&ts)
            .expect("valid traffic split");
        assert_eq!(
            weights(&rules),
            vec![vec![
                ("checkout-stable".into(), 900),
                ("checkout-canary".into(), 100)
            ]]
        );
        assert_eq!(rules[0].backends[1].weight_path, "/spec/backends/1/weight");
    }

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
