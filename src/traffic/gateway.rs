//! Gateway API `HTTPRoute`: `spec.rules[*].backendRefs[*].weight`.

use kube::core::GroupVersionKind;
use serde_json::Value;

use super::route::{
    Backend, RouteError, RouteRule, RouteType, array, optional_string, string_field, weight_field,
};
use crate::api::rollout::TrafficRouter;

pub struct HttpRoute;

impl RouteType for HttpRoute {
    fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute")
    }

    fn plural(&self) -> &'static str {
        "httproutes"
    }

    fn named_in(&self, router: &TrafficRouter) -> Option<String> {
        router.gateway_api.as_ref().map(|g| g.http_route.clone())
    }

    fn rules(&self, spec: &Value) -> Result<Vec<RouteRule>, RouteError> {
        http_route_rules(spec)
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::traffic::route::{RouteKind, RouteRule};

    fn weights(rules: &[RouteRule]) -> Vec<Vec<(String, u32)>> {
        rules.iter().map(RouteRule::service_weights).collect()
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
}
