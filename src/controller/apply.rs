//! Applying a plan's actions to the cluster. Each action is idempotent: applying it again after
//! a crash changes nothing that was already done.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::context::Context;
use super::error::ActionError;
use super::history::record_history;
use crate::api::Rollout;
use crate::api::release::{ContainerImage, Release, ReleasePhase, ReleaseSpec};
use crate::api::rollout::BaselineMode;
use crate::rollout::plan::{Action, ErrorKind};
use crate::rollout::workload::Arm;
use crate::rollout::workload::{
    ROLLOUT_LABEL, arm_deployment, arm_name, arm_service, artifact, controlled_by, prunable,
    service_ports,
};
use crate::traffic::router::{MeshRouter, ReplicaRouter, Router};
use crate::traffic::{Arms, RouteKind, Weights};

const MANAGER: &str = "rollguard";

pub struct Applier<'a> {
    ctx: &'a Context,
    ro: &'a Rollout,
    ns: String,
    name: String,
    /// The plan asked to forget the analysis run.
    pub reset: bool,
}

fn owner(ro: &Rollout, controller: bool) -> Value {
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

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn releases(&self) -> Api<Release> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    pub async fn apply(&mut self, action: &Action) -> Result<(), ActionError> {
        match action {
            Action::EnsureServices => self.ensure_services().await,
            Action::CreateRelease { name, phase } => self.create_release(name, *phase).await,
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
    fn refused(&self, e: &kube::Error, verb: &str, object: &str, doing: &str) -> ActionError {
        ActionError::kube(e, verb, object, &self.ns, doing)
    }

    async fn target(&self) -> Result<Deployment, ActionError> {
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

    async fn create_release(&self, name: &str, phase: ReleasePhase) -> Result<(), ActionError> {
        let target = self.target().await?;
        let template_meta = target
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.clone())
            .unwrap_or_default();
        let template =
            serde_json::to_value(target.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
        let a = artifact(&template, self.ro.spec.require_digest).map_err(|why| {
            ActionError::new(
                ErrorKind::Invalid,
                format!("Deployment {}", self.ro.spec.target_ref.name),
                why,
            )
            .on_field("spec.template")
        })?;
        let labels = template_meta.labels.unwrap_or_default();
        let version = ["app.kubernetes.io/version", "version"]
            .iter()
            .find_map(|k| labels.get(*k).cloned());
        let change_cause = target
            .annotations()
            .get("kubernetes.io/change-cause")
            .cloned();
        let mut release = Release::new(
            name,
            ReleaseSpec {
                rollout: self.name.clone(),
                images: a
                    .images
                    .iter()
                    .map(|(c, i)| ContainerImage {
                        container: c.clone(),
                        image: i.clone(),
                    })
                    .collect(),
                allow_tags: !self.ro.spec.require_digest,
                pod_template: template,
                version,
                change_cause,
            },
        );
        release.metadata.namespace = Some(self.ns.clone());
        release.metadata.labels = Some([(ROLLOUT_LABEL.to_owned(), self.name.clone())].into());
        release.metadata.owner_references = Some(vec![
            serde_json::from_value(owner(self.ro, false)).map_err(|e| {
                ActionError::new(ErrorKind::Invalid, format!("Release {name}"), e.to_string())
                    .on_field("metadata.ownerReferences")
            })?,
        ]);
        match self
            .releases()
            .create(&PostParams::default(), &release)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                let object = format!("Release {name}");
                return Err(self.refused(&e, "create", &object, &format!("creating {object}")));
            }
        }
        self.release_phase(name, phase, None).await
    }

    async fn release_phase(
        &self,
        name: &str,
        phase: ReleasePhase,
        verdict: Option<&crate::api::release::ReleaseVerdict>,
    ) -> Result<(), ActionError> {
        let api = self.releases();
        let object = format!("Release {name}");
        let current = api
            .get(name)
            .await
            .map_err(|e| self.refused(&e, "get", &object, &object))?;
        let status = current.status.unwrap_or_default();
        if status.phase == Some(phase) && (verdict.is_none() || status.verdict.as_ref() == verdict)
        {
            return Ok(());
        }
        let mut body = json!({"status": {"phase": phase}});
        if phase == ReleasePhase::Unstable {
            // A new verdict: the override that lifted an earlier one no longer applies.
            body["status"]["override"] = Value::Null;
        }
        if let Some(v) = verdict {
            body["status"]["verdict"] = serde_json::to_value(v).map_err(|e| {
                ActionError::new(ErrorKind::Invalid, object.clone(), e.to_string())
                    .on_field("status.verdict")
            })?;
        }
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(body))
            .await
            .map(drop)
            .map_err(|e| {
                self.refused(
                    &e,
                    "patch",
                    &object,
                    &format!("moving {object} to {phase:?}"),
                )
                .on_field("status.phase")
            })
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
        let client = self.ctx.client.clone();
        let router = self.ro.spec.traffic_router.as_ref();
        let route = router.and_then(|r| {
            r.gateway_api
                .as_ref()
                .map(|g| (RouteKind::HttpRoute, g.http_route.clone()))
                .or_else(|| {
                    r.istio
                        .as_ref()
                        .map(|i| (RouteKind::VirtualService, i.virtual_service.clone()))
                })
                .or_else(|| {
                    r.smi
                        .as_ref()
                        .map(|s| (RouteKind::TrafficSplit, s.traffic_split.clone()))
                })
        });
        let result = match route {
            Some((kind, name)) => {
                MeshRouter::new(client, &self.ns, kind, &name, self.arms())
                    .set(desired)
                    .await
            }
            None => {
                let stable = self
                    .ro
                    .status
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1);
                ReplicaRouter::new(client, &self.ns, &self.arms(), stable)
                    .set(desired)
                    .await
            }
        };
        result
            .map(drop)
            .map_err(|e| ActionError::from_router(e, &self.ns))
    }

    /// Deletes what [`prunable`] says: past `historyLimit`, never one the status points at,
    /// never an Unstable one.
    async fn prune(&self) -> Result<(), ActionError> {
        let api = self.releases();
        let mut list = api
            .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={}", self.name)))
            .await
            .map_err(|e| self.refused(&e, "list", "Releases", "listing Releases"))?
            .items;
        list.sort_by_key(|r| std::cmp::Reverse(r.creation_timestamp().map(|t| t.0)));
        let status = self.ro.status.clone().unwrap_or_default();
        let pinned: Vec<String> = [status.stable, status.canary, status.previous_stable]
            .into_iter()
            .flatten()
            .map(|r| r.release)
            .collect();
        let newest_first: Vec<(String, Option<ReleasePhase>)> = list
            .iter()
            .map(|r| (r.name_any(), r.status.as_ref().and_then(|s| s.phase)))
            .collect();
        let keep = self.ro.spec.history_limit.max(1) as usize;
        for name in prunable(&newest_first, &pinned, keep) {
            api.delete(name, &DeleteParams::default())
                .await
                .map(drop)
                .or_else(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => Ok(()),
                    e => {
                        let object = format!("Release {name}");
                        Err(self.refused(&e, "delete", &object, &format!("pruning {object}")))
                    }
                })?;
            tracing::info!(release = %name, "pruned beyond historyLimit");
        }
        Ok(())
    }
}
