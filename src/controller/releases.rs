//! The actions on Releases: create one from the target's template, move its phase, and prune
//! those beyond the history limit.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::apply::{Applier, owner};
use super::error::ActionError;
use crate::api::release::{ContainerImage, Redeploy, Release, ReleasePhase, ReleaseSpec};
use crate::rollout::plan::ErrorKind;
use crate::rollout::workload::{DEPLOYED_BY_ANNOTATION, ROLLOUT_LABEL, artifact, pinned, prunable};

impl Applier<'_> {
    pub(super) async fn create_release(
        &self,
        name: &str,
        phase: ReleasePhase,
    ) -> Result<(), ActionError> {
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
        let version = crate::redeploy::VERSION_LABELS
            .iter()
            .find_map(|k| labels.get(*k).cloned());
        let change_cause = target
            .annotations()
            .get("kubernetes.io/change-cause")
            .cloned();
        // Bounded like every tenant string; the schema refuses longer names.
        let deployed_by = target
            .annotations()
            .get(DEPLOYED_BY_ANNOTATION)
            .filter(|by| !by.is_empty() && by.len() <= 256)
            .cloned();
        let config_hashes = self.config_hashes(&template).await;
        let spec = ReleaseSpec {
            rollout: self.name.clone(),
            images: images(&a),
            allow_tags: !self.ro.spec.require_digest,
            pod_template: template,
            version,
            change_cause,
            deployed_by,
            config_hashes,
            redeploy: None,
        };
        self.insert_release(name, spec, phase).await
    }

    /// A redeploy's Release: the images of one Release on the pod template of another, both
    /// read from the cluster, recorded as deployed by the requester (whom the apiserver named).
    pub(super) async fn create_redeploy(
        &self,
        name: &str,
        redeploy: &Redeploy,
        by: &str,
    ) -> Result<(), ActionError> {
        let images_of = self.get_release(&redeploy.images_of).await?;
        let config_of = self.get_release(&redeploy.config_of).await?;
        let (template, _) = crate::redeploy::merged_template(
            &images_of.spec.pod_template,
            &config_of.spec.pod_template,
        );
        let a = artifact(&template, !config_of.spec.allow_tags).map_err(|why| {
            ActionError::new(ErrorKind::Invalid, format!("Release {name}"), why)
                .on_field("spec.podTemplate")
        })?;
        let spec = ReleaseSpec {
            rollout: self.name.clone(),
            images: images(&a),
            allow_tags: config_of.spec.allow_tags,
            pod_template: template,
            version: images_of.spec.version.clone(),
            change_cause: Some(format!(
                "redeploy of {}'s images on {}'s configuration",
                redeploy.images_of, redeploy.config_of
            )),
            deployed_by: Some(by.to_owned()).filter(|by| !by.is_empty() && by.len() <= 256),
            config_hashes: config_of.spec.config_hashes.clone(),
            redeploy: Some(redeploy.clone()),
        };
        self.insert_release(name, spec, ReleasePhase::Progressing)
            .await
    }

    async fn get_release(&self, name: &str) -> Result<Release, ActionError> {
        self.releases().get(name).await.map_err(|e| {
            let object = format!("Release {name}");
            self.refused(&e, "get", &object, &object)
        })
    }

    /// Creates the Release (one that exists already is kept: Release.spec is immutable), then
    /// gives it `phase`.
    async fn insert_release(
        &self,
        name: &str,
        spec: ReleaseSpec,
        phase: ReleasePhase,
    ) -> Result<(), ActionError> {
        let mut release = Release::new(name, spec);
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

    /// The content hash of each ConfigMap the template refers to, read now (at release time);
    /// one that cannot be read is recorded without a hash, and the release goes on.
    async fn config_hashes(&self, template: &Value) -> Vec<crate::api::release::ConfigHash> {
        let names = crate::preflight::references(template).config_maps;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(self.ctx.client.clone(), &self.ns);
        let mut hashes = std::collections::BTreeMap::new();
        for name in names {
            let hash = match api.get_opt(&name).await {
                Ok(Some(cm)) => Some(crate::preflight::config_map_hash(cm)),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(rollout = %self.name, configmap = %name, error = %e, "cannot read a referenced ConfigMap; its hash is not recorded");
                    None
                }
            };
            hashes.insert(name, hash);
        }
        crate::preflight::record(template, |name| hashes.get(name).cloned().flatten())
    }

    pub(super) async fn release_phase(
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

    /// Deletes what [`prunable`] says: past `historyLimit`, never one the status points at,
    /// never an Unstable one.
    pub(super) async fn prune(&self) -> Result<(), ActionError> {
        let api = self.releases();
        let mut list = api
            .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={}", self.name)))
            .await
            .map_err(|e| self.refused(&e, "list", "Releases", "listing Releases"))?
            .items;
        list.sort_by_key(|r| std::cmp::Reverse(r.creation_timestamp().map(|t| t.0)));
        let pinned = pinned(&self.ro.status.clone().unwrap_or_default());
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

fn images(a: &crate::rollout::workload::Artifact) -> Vec<ContainerImage> {
    a.images
        .iter()
        .map(|(c, i)| ContainerImage {
            container: c.clone(),
            image: i.clone(),
        })
        .collect()
}
