//! Writing weights and reading them back: one trait, a router per kind of route object, and
//! the replica-ratio router for services without a mesh.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use serde_json::json;

use super::kinds::named_route;
use super::route::{RouteError, RouteKind};
use super::weights::{self, Arms, Weights};
use crate::api::rollout::TrafficRouter;
use crate::rollout::workload::{canary_replicas, replica_weight};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{kind} {name}: {source}")]
    Route {
        kind: String,
        name: String,
        source: RouteError,
    },
    /// The apiserver refused `verb` (`get`, `patch`) on `what`.
    #[error("{what}: {source}")]
    Api {
        what: String,
        verb: &'static str,
        source: kube::Error,
    },
    #[error("{what}: still changed by another writer after {attempts} attempts")]
    Conflict { what: String, attempts: u32 },
    #[error("{what}: {reason}")]
    Encoding { what: String, reason: String },
    #[error("{what}: wrote {wanted} but read back {found}")]
    NotVerified {
        what: String,
        wanted: Weights,
        found: Weights,
    },
}

/// Sets traffic weights and says what is in effect.
pub trait Router {
    /// The weights in effect now.
    fn weights(&self) -> impl Future<Output = Result<Weights, RouterError>> + Send;
    /// Writes `desired`, reads it back, and returns it once verified.
    fn set(&self, desired: Weights) -> impl Future<Output = Result<Weights, RouterError>> + Send;
}

/// Attempts of a guarded patch before giving up on a route that keeps changing.
pub const PATCH_ATTEMPTS: u32 = 5;

/// A route object of one of the mesh kinds.
pub struct MeshRouter {
    api: Api<DynamicObject>,
    kind: RouteKind,
    name: String,
    arms: Arms,
}

impl MeshRouter {
    pub fn new(client: Client, namespace: &str, kind: RouteKind, name: &str, arms: Arms) -> Self {
        MeshRouter {
            api: Api::namespaced_with(client, namespace, &kind.api_resource()),
            kind,
            name: name.to_owned(),
            arms,
        }
    }

    fn what(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    fn route_error(&self, source: RouteError) -> RouterError {
        RouterError::Route {
            kind: self.kind.to_string(),
            name: self.name.clone(),
            source,
        }
    }

    async fn object(&self) -> Result<serde_json::Value, RouterError> {
        let obj = self
            .api
            .get(&self.name)
            .await
            .map_err(|source| RouterError::Api {
                what: self.what(),
                verb: "get",
                source,
            })?;
        serde_json::to_value(obj).map_err(|e| RouterError::Encoding {
            what: self.what(),
            reason: format!("the object does not encode as JSON: {e}"),
        })
    }
}

/// A guarded patch lost a race: the object changed between our read and our write.
fn is_conflict(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 409
                || s.code == 422
                || (s.code == 400 || s.code == 500) && s.message.contains("test")
        }
        _ => false,
    }
}

impl Router for MeshRouter {
    async fn weights(&self) -> Result<Weights, RouterError> {
        let object = self.object().await?;
        weights::read(self.kind, &object, &self.arms).map_err(|e| self.route_error(e))
    }

    async fn set(&self, desired: Weights) -> Result<Weights, RouterError> {
        let mut written = false;
        for attempt in 1..=PATCH_ATTEMPTS {
            let object = self.object().await?;
            let ops = weights::patch(self.kind, &object, &self.arms, desired)
                .map_err(|e| self.route_error(e))?;
            if ops.is_empty() {
                written = true;
                break;
            }
            let patch: json_patch::Patch =
                serde_json::from_value(json!(ops)).map_err(|e| RouterError::Encoding {
                    what: self.what(),
                    reason: format!("the weight patch does not encode: {e}"),
                })?;
            match self
                .api
                .patch(
                    &self.name,
                    &PatchParams::default(),
                    &Patch::Json::<()>(patch),
                )
                .await
            {
                Ok(_) => {
                    written = true;
                    break;
                }
                Err(e) if is_conflict(&e) => {
                    tracing::info!(route = %self.what(), attempt, error = %e, "route changed under the patch; reading it again");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(source) => {
                    return Err(RouterError::Api {
                        what: self.what(),
                        verb: "patch",
                        source,
                    });
                }
            }
        }
        if !written {
            return Err(RouterError::Conflict {
                what: self.what(),
                attempts: PATCH_ATTEMPTS,
            });
        }
        let found = self.weights().await?;
        if found != desired {
            return Err(RouterError::NotVerified {
                what: self.what(),
                wanted: desired,
                found,
            });
        }
        Ok(found)
    }
}

/// No mesh: the canary's share is its share of the pods.
pub struct ReplicaRouter {
    api: Api<Deployment>,
    stable: String,
    canary: String,
    baseline: Option<String>,
    /// The stable size the canary is counted against.
    stable_replicas: i32,
    /// How long pods may take to appear or go before verification fails.
    pub settle: Duration,
}

impl ReplicaRouter {
    pub fn new(
        client: Client,
        namespace: &str,
        arms: &Arms,
        stable_replicas: i32,
    ) -> ReplicaRouter {
        ReplicaRouter {
            api: Api::namespaced(client, namespace),
            stable: arms.stable.clone(),
            canary: arms.canary.clone(),
            baseline: arms.baseline.clone(),
            stable_replicas,
            settle: Duration::from_secs(30),
        }
    }

    async fn ready(&self, name: &str) -> Result<(i32, i32), RouterError> {
        let d = self
            .api
            .get_opt(name)
            .await
            .map_err(|source| RouterError::Api {
                what: format!("Deployment {name}"),
                verb: "get",
                source,
            })?;
        let status = d.and_then(|d| d.status).unwrap_or_default();
        Ok((
            status.replicas.unwrap_or(0),
            status.ready_replicas.unwrap_or(0),
        ))
    }
}

impl Router for ReplicaRouter {
    async fn weights(&self) -> Result<Weights, RouterError> {
        let (_, stable) = self.ready(&self.stable).await?;
        let (canary_pods, _) = self.ready(&self.canary).await?;
        let baseline = match &self.baseline {
            Some(b) => self.ready(b).await?.0,
            None => 0,
        };
        Ok(Weights {
            canary: replica_weight(canary_pods, stable),
            baseline: replica_weight(baseline, stable),
        })
    }

    async fn set(&self, desired: Weights) -> Result<Weights, RouterError> {
        let mut targets = vec![(self.canary.clone(), desired.canary)];
        if let Some(b) = &self.baseline {
            targets.push((b.clone(), desired.baseline));
        }
        for (name, weight) in &targets {
            let replicas = canary_replicas(self.stable_replicas, *weight, false);
            let patched = self
                .api
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                )
                .await;
            match patched {
                Ok(_) => {}
                // An arm that does not exist yet already takes no traffic.
                Err(kube::Error::Api(s)) if s.code == 404 && replicas == 0 => {}
                Err(source) => {
                    return Err(RouterError::Api {
                        what: format!("Deployment {name}"),
                        verb: "patch",
                        source,
                    });
                }
            }
        }
        let start = std::time::Instant::now();
        loop {
            let mut settled = true;
            for (name, weight) in &targets {
                let want = canary_replicas(self.stable_replicas, *weight, false);
                let (pods, ready) = self.ready(name).await?;
                settled &= pods == want && ready == want;
            }
            if settled {
                return self.weights().await;
            }
            if start.elapsed() > self.settle {
                let found = self.weights().await?;
                return Err(RouterError::NotVerified {
                    what: format!("replicas of {}", self.canary),
                    wanted: desired,
                    found,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The router a Rollout's spec calls for: the route its `trafficRouter` names, or replica
/// counts when it names none.
pub enum AnyRouter {
    Mesh(MeshRouter),
    Replicas(ReplicaRouter),
}

impl AnyRouter {
    /// `stable_replicas` is the stable's size, from which the replica router derives shares.
    pub fn for_rollout(
        client: Client,
        namespace: &str,
        spec: Option<&TrafficRouter>,
        arms: Arms,
        stable_replicas: i32,
    ) -> AnyRouter {
        match named_route(spec) {
            Some((kind, name)) => {
                AnyRouter::Mesh(MeshRouter::new(client, namespace, kind, &name, arms))
            }
            None => AnyRouter::Replicas(ReplicaRouter::new(
                client,
                namespace,
                &arms,
                stable_replicas,
            )),
        }
    }
}

impl Router for AnyRouter {
    async fn weights(&self) -> Result<Weights, RouterError> {
        match self {
            AnyRouter::Mesh(r) => r.weights().await,
            AnyRouter::Replicas(r) => r.weights().await,
        }
    }

    async fn set(&self, desired: Weights) -> Result<Weights, RouterError> {
        match self {
            AnyRouter::Mesh(r) => r.set(desired).await,
            AnyRouter::Replicas(r) => r.set(desired).await,
        }
    }
}
