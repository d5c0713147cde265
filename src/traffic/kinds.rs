//! The kinds of route rollguard steers, and which one a Rollout names. Each kind is a file that
//! implements [`RouteType`]; this is the one place that maps a [`RouteKind`] to its file.

use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::route::{RouteError, RouteKind, RouteRule, RouteType};
use super::{gateway, istio, smi};
use crate::api::rollout::TrafficRouter;

impl RouteKind {
    pub const ALL: [RouteKind; 3] = [
        RouteKind::HttpRoute,
        RouteKind::VirtualService,
        RouteKind::TrafficSplit,
    ];

    pub fn route_type(self) -> &'static dyn RouteType {
        match self {
            RouteKind::HttpRoute => &gateway::HttpRoute,
            RouteKind::VirtualService => &istio::VirtualService,
            RouteKind::TrafficSplit => &smi::TrafficSplit,
        }
    }

    pub fn gvk(self) -> GroupVersionKind {
        self.route_type().gvk()
    }

    pub fn plural(self) -> &'static str {
        self.route_type().plural()
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
        self.route_type().rules(spec)
    }

    /// Weights are relative to the rule's total rather than percentages.
    pub fn relative_weights(self) -> bool {
        self.route_type().relative_weights()
    }
}

/// The route `spec.trafficRouter` names, with its kind; None when the Rollout has no mesh and
/// its traffic follows replica counts.
pub fn named_route(router: Option<&TrafficRouter>) -> Option<(RouteKind, String)> {
    let router = router?;
    RouteKind::ALL
        .into_iter()
        .find_map(|kind| kind.route_type().named_in(router).map(|name| (kind, name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rollout::{GatewayApiRouter, IstioRouter, SmiRouter};

    #[test]
    fn the_spec_names_the_route_and_its_kind() {
        let none = TrafficRouter {
            gateway_api: None,
            istio: None,
            smi: None,
        };
        assert_eq!(named_route(None), None, "no mesh: replica counts");
        assert_eq!(named_route(Some(&none)), None);
        let gateway = TrafficRouter {
            gateway_api: Some(GatewayApiRouter {
                http_route: "web".into(),
            }),
            ..none.clone()
        };
        assert_eq!(
            named_route(Some(&gateway)),
            Some((RouteKind::HttpRoute, "web".into()))
        );
        let smi = TrafficRouter {
            smi: Some(SmiRouter {
                traffic_split: "web-split".into(),
            }),
            ..none.clone()
        };
        assert_eq!(
            named_route(Some(&smi)),
            Some((RouteKind::TrafficSplit, "web-split".into()))
        );
        let istio: IstioRouter =
            serde_json::from_value(serde_json::json!({"virtualService": "web-vs"}))
                .expect("istio router");
        let istio = TrafficRouter {
            istio: Some(istio),
            ..none
        };
        assert_eq!(
            named_route(Some(&istio)),
            Some((RouteKind::VirtualService, "web-vs".into()))
        );
        for kind in RouteKind::ALL {
            assert_eq!(kind.route_type().gvk().kind, kind.to_string());
            assert_eq!(kind.relative_weights(), kind == RouteKind::TrafficSplit);
        }
    }
}
