//! Istio `VirtualService`: `spec.http[*].route[*].weight`.

use kube::core::GroupVersionKind;
use serde_json::Value;

use super::route::{
    Backend, RouteError, RouteRule, RouteType, array, optional_string, split_mesh_host,
    string_field, weight_field,
};
use crate::api::rollout::TrafficRouter;

pub struct VirtualService;

impl RouteType for VirtualService {
    fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService")
    }

    fn plural(&self) -> &'static str {
        "virtualservices"
    }

    fn named_in(&self, router: &TrafficRouter) -> Option<String> {
        router.istio.as_ref().map(|i| i.virtual_service.clone())
    }

    fn rules(&self, spec: &Value) -> Result<Vec<RouteRule>, RouteError> {
        virtual_service_rules(spec)
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::traffic::route::{RouteKind, RouteRule};

    fn weights(rules: &[RouteRule]) -> Vec<Vec<(String, u32)>> {
        rules.iter().map(RouteRule::service_weights).collect()
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
}
