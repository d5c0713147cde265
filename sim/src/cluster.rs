//! Watches of the cluster (reflector caches) and their reading into a [`Snapshot`].

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use rollguard::traffic::RouteKind;
use serde_json::Value;
use tracing::warn;

use crate::plan::{Labels, PodView, RouteView, ServiceView, Snapshot, Subsets, workload_name};
use crate::profile::{FaultProfile, PROFILE_ANNOTATION};

/// Requests per second for a route (or a Service, sent straight to it).
pub const RPS_ANNOTATION: &str = "sim.rollguard.dev/rps";

pub struct Cluster {
    pods: Store<Pod>,
    services: Store<Service>,
    routes: Vec<(RouteKind, Store<DynamicObject>)>,
    destination_rules: Store<DynamicObject>,
}

/// Keeps `writer`'s cache in sync with the API until the process ends.
fn spawn_reflector<K>(api: Api<K>, writer: reflector::store::Writer<K>, what: String)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        reflector::reflector(writer, stream)
            .for_each(|event| {
                if let Err(e) = event {
                    // A missing CRD (e.g. no Istio) lands here too; the backoff retries it.
                    warn!(watch = %what, error = %e, "watch failed; retrying with backoff");
                }
                futures::future::ready(())
            })
            .await;
    });
}

fn spawn_dynamic(client: &Client, ar: ApiResource) -> Store<DynamicObject> {
    let writer = reflector::store::Writer::new(ar.clone());
    let store = writer.as_reader();
    spawn_reflector(Api::all_with(client.clone(), &ar), writer, ar.kind.clone());
    store
}

impl Cluster {
    pub fn watch(client: &Client) -> Cluster {
        let (pods, pod_writer) = reflector::store();
        spawn_reflector(Api::<Pod>::all(client.clone()), pod_writer, "Pod".into());
        let (services, service_writer) = reflector::store();
        spawn_reflector(
            Api::<Service>::all(client.clone()),
            service_writer,
            "Service".into(),
        );
        let routes = RouteKind::ALL
            .into_iter()
            .map(|kind| (kind, spawn_dynamic(client, kind.api_resource())))
            .collect();
        let dr = GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule");
        let destination_rules = spawn_dynamic(
            client,
            ApiResource::from_gvk_with_plural(&dr, "destinationrules"),
        );
        Cluster {
            pods,
            services,
            routes,
            destination_rules,
        }
    }

    /// Waits for the Pod and Service caches. Route caches are not waited for: a mesh whose
    /// CRDs are not installed must not hold the others up.
    pub async fn wait_until_ready(&self) {
        let _ = futures::join!(
            self.pods.wait_until_ready(),
            self.services.wait_until_ready()
        );
    }

    pub fn snapshot(&self, default_rps: f64, problems: &mut Vec<String>) -> Snapshot {
        let mut snap = Snapshot::default();
        for svc in self.services.state() {
            let namespace = svc.namespace().unwrap_or_default();
            let selector: Labels = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            let direct_rps = rps_annotation(
                svc.annotations(),
                &format!("Service {namespace}/{}", svc.name_any()),
                problems,
            );
            snap.services.insert(
                (namespace.clone(), svc.name_any()),
                ServiceView {
                    namespace,
                    name: svc.name_any(),
                    selector,
                    direct_rps,
                },
            );
        }
        for pod in self.pods.state() {
            if let Some(view) = pod_view(&pod, problems) {
                snap.pods.push(view);
            }
        }
        for (kind, store) in &self.routes {
            for obj in store.state() {
                let namespace = obj.namespace().unwrap_or_default();
                let what = format!("{kind} {namespace}/{}", obj.name_any());
                let rules = match kind.rules(&obj.data) {
                    Ok(rules) => rules,
                    Err(e) => {
                        problems.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                let rps = rps_annotation(obj.annotations(), &what, problems).unwrap_or(default_rps);
                snap.routes.push(RouteView {
                    kind: kind.to_string(),
                    namespace,
                    name: obj.name_any(),
                    rps,
                    rules,
                });
            }
        }
        snap.subsets = subsets(&self.destination_rules);
        snap
    }
}

fn rps_annotation(
    annotations: &BTreeMap<String, String>,
    what: &str,
    problems: &mut Vec<String>,
) -> Option<f64> {
    let text = annotations.get(RPS_ANNOTATION)?;
    match text.parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps >= 0.0 => Some(rps),
        _ => {
            problems.push(format!(
                "{what}: annotation {RPS_ANNOTATION}={text:?} is not a non-negative number"
            ));
            None
        }
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_view(pod: &Pod, problems: &mut Vec<String>) -> Option<PodView> {
    if !is_ready(pod) {
        return None;
    }
    let namespace = pod.namespace().unwrap_or_default();
    let labels: Labels = pod.labels().clone();
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    let workload = workload_name(
        &labels,
        owner.map(|o| o.kind.as_str()),
        owner.map(|o| o.name.as_str()),
        &pod.name_any(),
    );
    let profile = match pod.annotations().get(PROFILE_ANNOTATION) {
        None => FaultProfile::default(),
        Some(text) => FaultProfile::parse(text).unwrap_or_else(|e| {
            problems.push(format!(
                "Pod {namespace}/{}: {e}; serving the default profile",
                pod.name_any()
            ));
            FaultProfile::default()
        }),
    };
    Some(PodView {
        namespace,
        name: pod.name_any(),
        labels,
        workload,
        profile: Arc::new(profile),
    })
}

fn subsets(store: &Store<DynamicObject>) -> Subsets {
    let mut out = Subsets::new();
    for dr in store.state() {
        let namespace = dr.namespace().unwrap_or_default();
        let Some(host) = dr.data.pointer("/spec/host").and_then(Value::as_str) else {
            continue;
        };
        let (service, host_ns) = rollguard::traffic::route::split_mesh_host(host);
        let entry = out
            .entry((host_ns.unwrap_or(namespace), service))
            .or_default();
        for subset in dr
            .data
            .pointer("/spec/subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(labels)) = (
                subset.get("name").and_then(Value::as_str),
                subset.get("labels").and_then(Value::as_object),
            ) else {
                continue;
            };
            let labels = labels
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect();
            entry.insert(name.to_owned(), labels);
        }
    }
    out
}
