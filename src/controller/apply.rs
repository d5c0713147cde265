//! Applying a plan's actions to the cluster. Each action is idempotent: applying it again after
//! a crash changes nothing that was already done.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::context::Context;
use super::error::ActionError;
use super::history::record_history;
use crate::api::Rollout;
use crate::api::release::Release;
use crate::api::rollout::BaselineMode;
use crate::rollout::plan::{Action, ErrorKind};
use crate::rollout::workload::Arm;
use crate::rollout::workload::{
    arm_deployment, arm_name, arm_service, controlled_by, service_ports,
};
use crate::traffic::router::{AnyRouter, Router};
use crate::traffic::{Arms, Weights};

const MANAGER: &str = "rollguard";

pub struct Applier<'a> {
    pub(super) ctx: &'a Context,
    pub(super) ro: &'a Rollout,
    pub(super) ns: String,
    pub(super) name: String,
    /// The plan asked to forget the analysis run.
    pub reset: bool,
}

pub(super) fn owner(ro: &Rollout, controller: bool) -> Value {
    json!({
        "apiVersion": "rollguard.dev/v1alpha1",
        "kind": "Rollout",
        "name": ro.name_any(),
        "uid": ro.uid().unwrap_or_default(),
        "controller": controller,
        "blockOwnerDeletion": true,
    })
}

fn ssa() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

impl<'a> Applier<'a> {
    pub fn new(ctx: &'a Context, ro: &'a Rollout) -> Applier<'a> {
        Applier {
            ctx,
            ro,
            ns: ro.namespace().unwrap_or_default(),
            name: ro.name_any(),
            reset: false,
        }
    }

    pub(super) fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    pub(super) fn releases(&self) -> Api<Release> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    pub async fn apply(&mut self, action: &Action) -> Result<(), ActionError> {
        match action {
            Action::EnsureServices => self.ensure_services().await,
            Action::CreateRelease { name, phase } => self.create_release(name, *phase).await,
            Action::CreateRedeploy { name, redeploy, by } => {
                self.create_redeploy(name, redeploy, by).await
            }
            Action::ApplyArm {
                arm,
                release,
                replicas,
            } => self.apply_arm(*arm, release, *replicas).await,
            Action::ScaleArm { arm, replicas } => {
                self.scale(&arm_name(&self.name, *arm), *replicas).await
            }
            Action::ScaleTarget => self.scale(&self.ro.spec.target_ref.name.clone(), 0).await,
            Action::SetWeights { canary, baseline } => {
                self.set_weights(Weights {
                    canary: *canary,
                    baseline: *baseline,
                })
                .await
            }
            Action::ReleasePhase {
                release,
                phase,
                verdict,
            } => self.release_phase(release, *phase, verdict.as_ref()).await,
            Action::ReleaseHistory { release, entry } => {
                record_history(&self.releases(), release, entry, json!({}))
                    .await
                    .map_err(|e| {
                        self.refused(
                            &e,
                            "patch",
                            &format!("Release {release}"),
                            &format!("recording history on Release {release}"),
                        )
                        .on_field("status.history")
                    })
            }
            Action::ResetAnalysis => {
                self.reset = true;
                Ok(())
            }
            Action::PruneReleases => self.prune().await,
        }
    }

    /// The apiserver refused `verb` on `object`; `doing` words it for the message (`scaling
    /// Deployment web-canary to 3`).
    pub(super) fn refused(
        &self,
        e: &kube::Error,
        verb: &str,
        object: &str,
        doing: &str,
    ) -> ActionError {
        ActionError::kube(e, verb, object, &self.ns, doing)
    }

    pub(super) async fn target(&self) -> Result<Deployment, ActionError> {
        let t = format!("Deployment {}", self.ro.spec.target_ref.name);
        self.deployments()
            .get(&self.ro.spec.target_ref.name)
            .await
            .map_err(|e| self.refused(&e, "get", &t, &format!("target {t}")))
    }

    async fn ensure_services(&self) -> Result<(), ActionError> {
        let target = self.target().await?;
        let template = serde_json::to_value(target.spec.map(|s| s.template)).unwrap_or_default();
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let user = services
            .get_opt(&self.ro.spec.target_ref.name)
            .await
            .map_err(|e| {
                let object = format!("Service {}", self.ro.spec.target_ref.name);
                self.refused(&e, "get", &object, &object)
            })?
            .map(|s| serde_json::to_value(s).unwrap_or_default());
        let ports = service_ports(user.as_ref(), &template);
        let mut arms = vec![Arm::Stable, Arm::Canary];
        if self.ro.spec.baseline == BaselineMode::Fresh {
            arms.push(Arm::Baseline);
        }
        for arm in arms {
            let svc = arm_service(&self.name, &self.ns, &owner(self.ro, true), arm, &ports);
            let name = arm_name(&self.name, arm);
            self.existing_is_ours(&services, "Service", &name).await?;
            services
                .patch(&name, &ssa(), &Patch::Apply(svc))
                .await
                .map_err(|e| {
                    let object = format!("Service {name}");
                    self.refused(&e, "patch", &object, &format!("applying {object}"))
                })?;
        }
        Ok(())
    }

    async fn apply_arm(&self, arm: Arm, release: &str, replicas: i32) -> Result<(), ActionError> {
        let r = self.releases().get(release).await.map_err(|e| {
            let object = format!("Release {release}");
            self.refused(&e, "get", &object, &object)
        })?;
        let d = arm_deployment(
            &self.name,
            &self.ns,
            &owner(self.ro, true),
            arm,
            release,
            &r.spec.pod_template,
            replicas,
        );
        let name = arm_name(&self.name, arm);
        self.existing_is_ours(&self.deployments(), "Deployment", &name)
            .await?;
        self.deployments()
            .patch(&name, &ssa(), &Patch::Apply(d))
            .await
            .map(drop)
            .map_err(|e| {
                let object = format!("Deployment {name}");
                self.refused(&e, "patch", &object, &format!("applying {object}"))
            })
    }

    /// An arm's object, where it exists already, must be this Rollout's.
    async fn existing_is_ours<K>(
        &self,
        api: &Api<K>,
        kind: &str,
        name: &str,
    ) -> Result<(), ActionError>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let existing = api.get_opt(name).await.map_err(|e| {
            let object = format!("{kind} {name}");
            self.refused(&e, "get", &object, &object)
        })?;
        self.ours(kind, name, existing.as_ref().map(|o| o.owner_references()))
    }

    /// An existing object with an arm's name must be this Rollout's.
    fn ours(
        &self,
        kind: &str,
        name: &str,
        refs: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]>,
    ) -> Result<(), ActionError> {
        match refs {
            Some(refs) if !controlled_by(refs, &self.ro.uid().unwrap_or_default()) => {
                Err(ActionError::new(
                    ErrorKind::Conflict,
                    format!("{kind} {name}"),
                    format!(
                        "{kind} {name} exists and is not controlled by Rollout {}; rollguard \
                         leaves it alone: rename it, or the Rollout",
                        self.name
                    ),
                )
                .on_field("metadata.ownerReferences"))
            }
            _ => Ok(()),
        }
    }

    /// Scales a Deployment; a missing one already has no replicas. An arm must be this
    /// Rollout's; the target must not be.
    async fn scale(&self, name: &str, replicas: i32) -> Result<(), ActionError> {
        let api = self.deployments();
        let object = format!("Deployment {name}");
        let Some(d) = api
            .get_opt(name)
            .await
            .map_err(|e| self.refused(&e, "get", &object, &object))?
        else {
            return if replicas == 0 {
                Ok(())
            } else {
                let why = format!("Deployment {name} does not exist");
                Err(ActionError::new(ErrorKind::NotFound, object, why))
            };
        };
        let uid = self.ro.uid().unwrap_or_default();
        if name == self.ro.spec.target_ref.name {
            if controlled_by(d.owner_references(), &uid) {
                return Err(ActionError::new(
                    ErrorKind::Invalid,
                    object,
                    format!(
                        "target Deployment {name} is one of the Rollout's own; it is not scaled"
                    ),
                ));
            }
        } else {
            self.ours("Deployment", name, Some(d.owner_references()))?;
        }
        if d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas) {
            return Ok(());
        }
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
        api.patch(name, &PatchParams::default(), &patch)
            .await
            .map(drop)
            .map_err(|e| {
                self.refused(
                    &e,
                    "patch",
                    &object,
                    &format!("scaling {object} to {replicas}"),
                )
                .on_field("spec.replicas")
            })
    }

    fn arms(&self) -> Arms {
        let fresh = self.ro.spec.baseline == BaselineMode::Fresh;
        let istio = self
            .ro
            .spec
            .traffic_router
            .as_ref()
            .and_then(|r| r.istio.as_ref());
        Arms {
            stable: arm_name(&self.name, Arm::Stable),
            canary: arm_name(&self.name, Arm::Canary),
            baseline: fresh.then(|| arm_name(&self.name, Arm::Baseline)),
            subsets: istio
                .and_then(|i| i.destination_rule.as_ref())
                .map(|d| (d.stable_subset.clone(), d.canary_subset.clone())),
            only: istio.map(|i| i.routes.clone()).unwrap_or_default(),
        }
    }

    async fn set_weights(&self, desired: Weights) -> Result<(), ActionError> {
        let stable = self
            .ro
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let router = AnyRouter::for_rollout(
            self.ctx.client.clone(),
            &self.ns,
            self.ro.spec.traffic_router.as_ref(),
            self.arms(),
            stable,
        );
        router
            .set(desired)
            .await
            .map(drop)
            .map_err(|e| ActionError::from_router(e, &self.ns))
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::controller::mock::{Exchange, MockApi, status};
    use crate::rollout::fixtures::spec;

    const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments";
    const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/c";

    /// Rollout `c` in `shop` (uid `uid-c`), on the fixture's spec: an HTTPRoute `c`.
    fn rollout() -> Rollout {
        let mut ro = Rollout::new("c", spec());
        ro.metadata.namespace = Some("shop".into());
        ro.metadata.uid = Some("uid-c".into());
        ro
    }

    fn arm(name: &str, replicas: i32) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop", "ownerReferences": [{
                "apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout", "name": "c",
                "uid": "uid-c", "controller": true,
            }]},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
        })
    }

    fn route(canary: u32) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "c", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"rules": [{"backendRefs": [
                {"name": "c-stable", "port": 80, "weight": 100 - canary},
                {"name": "c-canary", "port": 80, "weight": canary},
            ]}]},
        })
    }

    async fn apply(script: Vec<Exchange>, action: Action) -> Result<(), ActionError> {
        let (client, mock) = MockApi::client(script);
        let ctx = Context::for_tests(client);
        let ro = rollout();
        let result = Applier::new(&ctx, &ro).apply(&action).await;
        mock.done();
        result
    }

    #[tokio::test]
    async fn a_409_on_scaling_is_a_conflict_on_spec_replicas() {
        let path = format!("{DEPLOYMENTS}/c-canary");
        let conflict = status(409, "Conflict", "the object has been modified", None);
        let e = apply(
            vec![
                Exchange::new(Method::GET, &path, 200, arm("c-canary", 1)),
                Exchange::new(Method::PATCH, &path, 409, conflict),
            ],
            Action::ScaleArm {
                arm: Arm::Canary,
                replicas: 2,
            },
        )
        .await
        .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert_eq!(e.object, "Deployment c-canary");
        assert_eq!(e.field, Some("spec.replicas"));
        assert!(
            e.message.starts_with("scaling Deployment c-canary to 2: "),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn a_403_on_the_route_names_the_verb_the_resource_and_the_weights() {
        let forbidden = status(
            403,
            "Forbidden",
            "httproutes.gateway.networking.k8s.io \"c\" is forbidden",
            Some(json!({"name": "c", "group": "gateway.networking.k8s.io", "kind": "httproutes"})),
        );
        let e = apply(
            vec![
                Exchange::new(Method::GET, ROUTE, 200, route(0)),
                Exchange::new(Method::PATCH, ROUTE, 403, forbidden),
            ],
            Action::SetWeights {
                canary: 10,
                baseline: 0,
            },
        )
        .await
        .expect_err("refused");
        assert_eq!((e.kind, e.field), (ErrorKind::Permission, Some("weights")));
        assert_eq!(e.object, "HTTPRoute c");
        assert!(
            e.message
                .contains("may not patch httproutes.gateway.networking.k8s.io in namespace shop"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn weights_are_written_then_read_back() {
        let ok = apply(
            vec![
                Exchange::new(Method::GET, ROUTE, 200, route(0)),
                Exchange::new(Method::PATCH, ROUTE, 200, route(10)),
                Exchange::new(Method::GET, ROUTE, 200, route(10)),
            ],
            Action::SetWeights {
                canary: 10,
                baseline: 0,
            },
        )
        .await;
        assert_eq!(ok, Ok(()));
        let unverified = apply(
            vec![
                Exchange::new(Method::GET, ROUTE, 200, route(0)),
                Exchange::new(Method::PATCH, ROUTE, 200, route(10)),
                Exchange::new(Method::GET, ROUTE, 200, route(0)),
            ],
            Action::SetWeights {
                canary: 10,
                baseline: 0,
            },
        )
        .await
        .expect_err("read back 0");
        assert_eq!(unverified.kind, ErrorKind::Transient);
    }

    #[tokio::test]
    async fn a_deployment_of_someone_else_is_neither_scaled_nor_patched() {
        let path = format!("{DEPLOYMENTS}/c-canary");
        let mut theirs = arm("c-canary", 1);
        theirs["metadata"]["ownerReferences"] = json!([]);
        let e = apply(
            vec![Exchange::new(Method::GET, &path, 200, theirs)],
            Action::ScaleArm {
                arm: Arm::Canary,
                replicas: 0,
            },
        )
        .await
        .expect_err("not ours");
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert_eq!(e.field, Some("metadata.ownerReferences"));
    }
}
