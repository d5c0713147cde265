//! The traffic plan: which pods receive how many requests per second, from the cluster as it is.
//!
//! Pure: a [`Snapshot`] of routes, Services and Ready pods goes in, [`Flow`]s come out. Traffic
//! follows the route weights in effect, then spreads evenly over the Ready pods each Service
//! selects, as a mesh's load balancer would.

use std::collections::BTreeMap;
use std::sync::Arc;

use rollguard::traffic::RouteRule;
use serde::Serialize;

use crate::profile::FaultProfile;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug)]
pub struct RouteView {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub rps: f64,
    pub rules: Vec<RouteRule>,
}

#[derive(Clone, Debug)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub selector: Labels,
    /// Requests per second sent straight to this Service, outside any route (the no-mesh case:
    /// the split then follows the replica counts).
    pub direct_rps: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The owning workload: the Deployment (or other controller) behind the pod's ReplicaSet.
    pub workload: String,
    pub profile: Arc<FaultProfile>,
}

/// Istio DestinationRule subsets: (namespace, host Service) → subset name → pod labels.
pub type Subsets = BTreeMap<(String, String), BTreeMap<String, Labels>>;

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub routes: Vec<RouteView>,
    pub services: BTreeMap<(String, String), ServiceView>,
    /// Ready, non-terminating pods only.
    pub pods: Vec<PodView>,
    pub subsets: Subsets,
}

/// The mesh labels of a stream of requests.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Destination {
    pub workload: String,
    pub workload_namespace: String,
    pub service_name: String,
    pub service_namespace: String,
    pub app: String,
    pub version: String,
}

/// Requests per second that reach one destination with one behaviour.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub destination: Destination,
    pub rps: f64,
    /// Why the flow exists: `HTTPRoute shop/checkout` or `Service shop/checkout`.
    pub source: String,
    /// The pod serving it; None when no pod is Ready.
    pub pod: Option<String>,
    /// None when the Service had no Ready pod: the mesh answers 503 "no healthy upstream".
    #[serde(skip)]
    pub profile: Option<Arc<FaultProfile>>,
}

pub const UNKNOWN: &str = "unknown";

fn selects(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Snapshot {
    pub fn plan(&self) -> Vec<Flow> {
        let mut flows = Vec::new();
        for route in &self.routes {
            let source = format!("{} {}/{}", route.kind, route.namespace, route.name);
            let rules: Vec<&RouteRule> = route
                .rules
                .iter()
                .filter(|r| r.total_weight() > 0)
                .collect();
            if rules.is_empty() {
                continue;
            }
            // A route's traffic is shared evenly by its rules (their matches are not modelled).
            let rule_rps = route.rps / rules.len() as f64;
            for rule in rules {
                let total = rule.total_weight() as f64;
                for backend in rule.backends.iter().filter(|b| b.weight > 0) {
                    let namespace = backend.namespace.as_deref().unwrap_or(&route.namespace);
                    let rps = rule_rps * f64::from(backend.weight) / total;
                    let subset = backend.subset.as_ref().and_then(|s| {
                        self.subsets
                            .get(&(namespace.to_owned(), backend.service.clone()))
                            .and_then(|subsets| subsets.get(s))
                    });
                    self.spread(
                        namespace,
                        &backend.service,
                        subset,
                        rps,
                        &source,
                        &mut flows,
                    );
                }
            }
        }
        for service in self.services.values() {
            if let Some(rps) = service.direct_rps.filter(|r| *r > 0.0) {
                let source = format!("Service {}/{}", service.namespace, service.name);
                self.spread(
                    &service.namespace,
                    &service.name,
                    None,
                    rps,
                    &source,
                    &mut flows,
                );
            }
        }
        flows
    }

    /// Spread `rps` for a Service evenly over the Ready pods it selects (and the subset admits).
    fn spread(
        &self,
        namespace: &str,
        service: &str,
        subset: Option<&Labels>,
        rps: f64,
        source: &str,
        flows: &mut Vec<Flow>,
    ) {
        let selector = self
            .services
            .get(&(namespace.to_owned(), service.to_owned()))
            .map(|s| &s.selector);
        let pods: Vec<&PodView> = match selector {
            Some(selector) => self
                .pods
                .iter()
                .filter(|p| p.namespace == namespace && selects(selector, &p.labels))
                .filter(|p| {
                    subset.is_none_or(|s| s.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                })
                .collect(),
            None => Vec::new(),
        };
        if pods.is_empty() {
            flows.push(Flow {
                destination: Destination {
                    workload: UNKNOWN.into(),
                    workload_namespace: namespace.into(),
                    service_name: service.into(),
                    service_namespace: namespace.into(),
                    app: UNKNOWN.into(),
                    version: UNKNOWN.into(),
                },
                rps,
                source: source.into(),
                pod: None,
                profile: None,
            });
            return;
        }
        let share = rps / pods.len() as f64;
        for pod in pods {
            let label = |key: &str| {
                pod.labels
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| UNKNOWN.into())
            };
            flows.push(Flow {
                destination: Destination {
                    workload: pod.workload.clone(),
                    workload_namespace: namespace.into(),
                    service_name: service.into(),
                    service_namespace: namespace.into(),
                    app: label("app"),
                    version: label("version"),
                },
                rps: share,
                source: source.into(),
                pod: Some(pod.name.clone()),
                profile: Some(pod.profile.clone()),
            });
        }
    }
}

/// The workload that owns a pod, as a mesh names it: a ReplicaSet's name less the pod-template
/// hash suffix, so `checkout-canary-7d9f8` becomes `checkout-canary`.
pub fn workload_name(
    pod_labels: &Labels,
    owner_kind: Option<&str>,
    owner_name: Option<&str>,
    pod_name: &str,
) -> String {
    match (owner_kind, owner_name) {
        (Some("ReplicaSet"), Some(rs)) => {
            for hash_label in ["pod-template-hash", "rollouts-pod-template-hash"] {
                if let Some(stripped) = pod_labels
                    .get(hash_label)
                    .and_then(|hash| rs.strip_suffix(hash.as_str()))
                    .and_then(|s| s.strip_suffix('-'))
                {
                    return stripped.to_owned();
                }
            }
            rs.to_owned()
        }
        (Some(_), Some(owner)) => owner.to_owned(),
        _ => pod_name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollguard::traffic::Backend;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn service(ns: &str, name: &str, selector: &[(&str, &str)]) -> ((String, String), ServiceView) {
        (
            (ns.into(), name.into()),
            ServiceView {
                namespace: ns.into(),
                name: name.into(),
                selector: labels(selector),
                direct_rps: None,
            },
        )
    }

    fn pod(
        ns: &str,
        name: &str,
        workload: &str,
        pod_labels: &[(&str, &str)],
        error_rate: f64,
    ) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(pod_labels),
            workload: workload.into(),
            profile: Arc::new(FaultProfile {
                error_rate,
                ..FaultProfile::default()
            }),
        }
    }

    fn backend(service: &str, weight: u32, subset: Option<&str>) -> Backend {
        Backend {
            service: service.into(),
            namespace: None,
            subset: subset.map(Into::into),
            weight,
            weight_path: String::new(),
        }
    }

    fn route(backends: Vec<Backend>, rps: f64) -> RouteView {
        RouteView {
            kind: "HTTPRoute".into(),
            namespace: "shop".into(),
            name: "checkout".into(),
            rps,
            rules: vec![RouteRule {
                name: None,
                backends,
            }],
        }
    }

    fn rps_by_workload(flows: &[Flow]) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for f in flows {
            *out.entry(f.destination.workload.clone()).or_insert(0.0) += f.rps;
        }
        out
    }

    fn canary_snapshot() -> Snapshot {
        Snapshot {
            services: [
                service(
                    "shop",
                    "checkout-stable",
                    &[("app", "checkout"), ("track", "stable")],
                ),
                service(
                    "shop",
                    "checkout-canary",
                    &[("app", "checkout"), ("track", "canary")],
                ),
            ]
            .into(),
            pods: vec![
                pod(
                    "shop",
                    "s1",
                    "checkout-stable",
                    &[("app", "checkout"), ("track", "stable")],
                    0.0,
                ),
                pod(
                    "shop",
                    "s2",
                    "checkout-stable",
                    &[("app", "checkout"), ("track", "stable")],
                    0.0,
                ),
                pod(
                    "shop",
                    "c1",
                    "checkout-canary",
                    &[("app", "checkout"), ("track", "canary")],
                    0.1,
                ),
                pod(
                    "other",
                    "x1",
                    "elsewhere",
                    &[("app", "checkout"), ("track", "canary")],
                    0.0,
                ),
            ],
            ..Snapshot::default()
        }
    }

    #[test]
    fn weights_split_route_traffic_then_pods_share_evenly() {
        let mut snap = canary_snapshot();
        snap.routes = vec![route(
            vec![
                backend("checkout-stable", 90, None),
                backend("checkout-canary", 10, None),
            ],
            200.0,
        )];
        let flows = snap.plan();
        assert_eq!(
            rps_by_workload(&flows),
            [
                ("checkout-canary".into(), 20.0),
                ("checkout-stable".into(), 180.0)
            ]
            .into()
        );
        let per_pod: Vec<f64> = flows.iter().map(|f| f.rps).collect();
        assert_eq!(per_pod, vec![90.0, 90.0, 20.0]);
        let canary = flows
            .iter()
            .find(|f| f.destination.workload == "checkout-canary")
            .expect("canary flow");
        assert_eq!(canary.profile.as_ref().map(|p| p.error_rate), Some(0.1));
        assert_eq!(canary.source, "HTTPRoute shop/checkout");
    }

    #[test]
    fn zero_weights_and_empty_routes_send_nothing() {
        let mut snap = canary_snapshot();
        snap.routes = vec![
            route(
                vec![
                    backend("checkout-stable", 100, None),
                    backend("checkout-canary", 0, None),
                ],
                50.0,
            ),
            route(vec![backend("checkout-stable", 0, None)], 50.0),
        ];
        assert_eq!(
            rps_by_workload(&snap.plan()),
            [("checkout-stable".into(), 50.0)].into()
        );
    }

    #[test]
    fn a_service_without_ready_pods_answers_no_healthy_upstream() {
        let mut snap = canary_snapshot();
        snap.pods.retain(|p| p.workload != "checkout-canary");
        snap.routes = vec![route(
            vec![
                backend("checkout-stable", 50, None),
                backend("checkout-canary", 50, None),
            ],
            100.0,
        )];
        let flows = snap.plan();
        let unknown: Vec<&Flow> = flows
            .iter()
            .filter(|f| f.destination.workload == UNKNOWN)
            .collect();
        assert_eq!(unknown.len(), 1);
        assert_eq!(unknown[0].rps, 50.0);
        assert!(unknown[0].profile.is_none());
        assert_eq!(unknown[0].destination.service_name, "checkout-canary");
    }

    #[test]
    fn destination_rule_subsets_narrow_the_pods() {
        let mut snap = Snapshot {
            services: [service("shop", "checkout", &[("app", "checkout")])].into(),
            pods: vec![
                pod(
                    "shop",
                    "a",
                    "checkout-v1",
                    &[("app", "checkout"), ("version", "v1")],
                    0.0,
                ),
                pod(
                    "shop",
                    "b",
                    "checkout-v2",
                    &[("app", "checkout"), ("version", "v2")],
                    0.0,
                ),
            ],
            ..Snapshot::default()
        };
        snap.subsets.insert(
            ("shop".into(), "checkout".into()),
            [
                ("v1".into(), labels(&[("version", "v1")])),
                ("v2".into(), labels(&[("version", "v2")])),
            ]
            .into(),
        );
        snap.routes = vec![route(
            vec![
                backend("checkout", 75, Some("v1")),
                backend("checkout", 25, Some("v2")),
            ],
            100.0,
        )];
        assert_eq!(
            rps_by_workload(&snap.plan()),
            [("checkout-v1".into(), 75.0), ("checkout-v2".into(), 25.0)].into()
        );
    }

    #[test]
    fn direct_service_traffic_follows_replica_counts() {
        let mut snap = Snapshot {
            services: [service("shop", "checkout", &[("app", "checkout")])].into(),
            pods: vec![
                pod("shop", "s1", "checkout-stable", &[("app", "checkout")], 0.0),
                pod("shop", "s2", "checkout-stable", &[("app", "checkout")], 0.0),
                pod("shop", "s3", "checkout-stable", &[("app", "checkout")], 0.0),
                pod("shop", "c1", "checkout-canary", &[("app", "checkout")], 0.0),
            ],
            ..Snapshot::default()
        };
        if let Some(svc) = snap.services.values_mut().next() {
            svc.direct_rps = Some(100.0);
        }
        assert_eq!(
            rps_by_workload(&snap.plan()),
            [
                ("checkout-canary".into(), 25.0),
                ("checkout-stable".into(), 75.0)
            ]
            .into()
        );
    }

    #[test]
    fn an_empty_selector_selects_nothing() {
        assert!(!selects(&Labels::new(), &labels(&[("app", "x")])));
    }

    #[test]
    fn workload_names_drop_the_template_hash() {
        let l = labels(&[("pod-template-hash", "7d9f8")]);
        assert_eq!(
            workload_name(&l, Some("ReplicaSet"), Some("checkout-canary-7d9f8"), "p"),
            "checkout-canary"
        );
        let argo = labels(&[("rollouts-pod-template-hash", "abc12")]);
        assert_eq!(
            workload_name(&argo, Some("ReplicaSet"), Some("checkout-abc12"), "p"),
            "checkout"
        );
        assert_eq!(
            workload_name(&Labels::new(), Some("ReplicaSet"), Some("odd"), "p"),
            "odd"
        );
        assert_eq!(
            workload_name(&Labels::new(), Some("StatefulSet"), Some("db"), "db-0"),
            "db"
        );
        assert_eq!(workload_name(&Labels::new(), None, None, "bare"), "bare");
    }
}
