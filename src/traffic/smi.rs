//! SMI `TrafficSplit`: `spec.backends[*].weight`, relative to their total.

use kube::core::GroupVersionKind;
use serde_json::Value;

use super::route::{Backend, RouteError, RouteRule, RouteType, array, string_field, weight_field};
use crate::api::rollout::TrafficRouter;

pub struct TrafficSplit;

impl RouteType for TrafficSplit {
    fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk("split.smi-spec.io", "v1alpha4", "TrafficSplit")
    }

    fn plural(&self) -> &'static str {
        "trafficsplits"
    }

    fn named_in(&self, router: &TrafficRouter) -> Option<String> {
        router.smi.as_ref().map(|s| s.traffic_split.clone())
    }

    fn rules(&self, spec: &Value) -> Result<Vec<RouteRule>, RouteError> {
        traffic_split_rules(spec).map(|rule| vec![rule])
    }

    fn relative_weights(&self) -> bool {
        true
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::traffic::route::{RouteKind, RouteRule};

    fn weights(rules: &[RouteRule]) -> Vec<Vec<(String, u32)>> {
        rules.iter().map(RouteRule::service_weights).collect()
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
}
