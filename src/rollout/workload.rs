//! The objects rollguard owns, built from a Release's pod template, and what is read back from
//! them. Pure: manifests in, manifests out.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

/// The three Deployments (and Services) rollguard owns for a Rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arm {
    Stable,
    Canary,
    Baseline,
}

impl std::fmt::Display for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
            Arm::Baseline => "baseline",
        })
    }
}

/// Label on every object rollguard owns: the Rollout's name.
pub const ROLLOUT_LABEL: &str = "rollguard.dev/rollout";
/// Label on owned Deployments, Services and their pods: stable, canary or baseline.
pub const ARM_LABEL: &str = "rollguard.dev/arm";
/// Annotation on owned Deployments and their pods: the Release they run.
pub const RELEASE_ANNOTATION: &str = "rollguard.dev/release";
/// Annotation on a Rollout carrying a manual request (promote, abort, pause, resume).
pub const REQUEST_ANNOTATION: &str = "rollguard.dev/request";
/// On the target Deployment: who changed it, recorded in the Release. The chart's admission
/// policy admits a new value only when it is the writer's own username.
pub const DEPLOYED_BY_ANNOTATION: &str = "rollguard.dev/deployed-by";

/// The artifact a pod template declares: the primary (first) container's image digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// `sha256:<64 hex>`, or the image reference itself when tags are allowed.
    pub digest: String,
    pub images: Vec<(String, String)>,
}

/// The digest in `image@sha256:<64 hex>`, if the image is pinned.
pub fn image_digest(image: &str) -> Option<&str> {
    let (_, digest) = image.rsplit_once('@')?;
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(digest)
}

/// Reads the images of a pod template and checks the digest policy.
pub fn artifact(template: &Value, require_digest: bool) -> Result<Artifact, String> {
    let containers = template["spec"]["containers"]
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or("the pod template has no containers")?;
    let mut images = Vec::new();
    for c in containers {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        let image = c["image"]
            .as_str()
            .ok_or_else(|| format!("container {name:?} has no image"))?
            .to_owned();
        if require_digest && image_digest(&image).is_none() {
            return Err(format!(
                "container {name:?} image {image:?} is not pinned by digest \
                 (image@sha256:<64 hex>); pin it, or set requireDigest: false on the Rollout"
            ));
        }
        images.push((name, image));
    }
    // Init containers run the release too: a tag there would make it mutable all the same.
    if require_digest {
        for c in template["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = c["name"].as_str().unwrap_or_default();
            let image = c["image"].as_str().unwrap_or_default();
            if image_digest(image).is_none() {
                return Err(format!(
                    "init container {name:?} image {image:?} is not pinned by digest \
                     (image@sha256:<64 hex>); pin it, or set requireDigest: false on the Rollout"
                ));
            }
        }
    }
    let primary = &images[0].1;
    let digest = image_digest(primary).map_or_else(|| primary.clone(), str::to_owned);
    Ok(Artifact { digest, images })
}

/// Whether an object's owner references name the Rollout with `uid` as its controller. An
/// object with an arm's name that the Rollout does not control is someone else's: rollguard
/// neither scales nor overwrites it.
pub fn controlled_by(
    refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    uid: &str,
) -> bool {
    !uid.is_empty()
        && refs
            .iter()
            .any(|r| r.uid == uid && r.kind == "Rollout" && r.controller == Some(true))
}

/// The Releases the Rollout's status points at, which pruning keeps: the stable, the canary,
/// the previous stable and, while a rollback or redeploy by hand is under way, its target and
/// the two Releases a redeploy is made of.
pub fn pinned(status: &crate::api::rollout::RolloutStatus) -> Vec<String> {
    use crate::api::rollout::RevertStep;
    let refs = [&status.stable, &status.canary, &status.previous_stable];
    let mut pinned: Vec<String> = refs
        .into_iter()
        .flatten()
        .map(|r| r.release.clone())
        .collect();
    let under_way = status.manual_rollback.as_ref().filter(|m| {
        !matches!(
            m.step,
            RevertStep::Done | RevertStep::Refused | RevertStep::Failed
        )
    });
    if let Some(m) = under_way {
        pinned.extend(m.to.iter().map(|r| r.release.clone()));
        pinned.extend(
            m.redeploy
                .iter()
                .flat_map(|d| [d.images_of.clone(), d.config_of.clone()]),
        );
    }
    pinned
}

/// The Releases to delete, given newest first with their phases: those past the newest `keep`,
/// except the ones the Rollout's status points at and every Unstable one. An Unstable verdict
/// is what keeps its digest from being canaried again, so it lives as long as the Rollout.
pub fn prunable<'a>(
    newest_first: &'a [(String, Option<crate::api::release::ReleasePhase>)],
    pinned: &[String],
    keep: usize,
) -> Vec<&'a str> {
    newest_first
        .iter()
        .skip(keep)
        .filter(|(name, phase)| {
            *phase != Some(crate::api::release::ReleasePhase::Unstable) && !pinned.contains(name)
        })
        .map(|(name, _)| name.as_str())
        .collect()
}

/// The first 12 hex digits of a digest, or a short form of a tag reference.
pub fn short_digest(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(hex) => hex.chars().take(12).collect(),
        None => digest
            .rsplit(['/', ':'])
            .next()
            .unwrap_or(digest)
            .to_owned(),
    }
}

/// One Release per (Rollout, digest): `<rollout>-<10 hex>`. Tag references get a stable hash.
pub fn release_name(rollout: &str, digest: &str) -> String {
    let suffix = match digest.strip_prefix("sha256:") {
        Some(hex) => hex.chars().take(10).collect(),
        None => format!("{:010x}", fnv1a(digest) & 0xff_ffff_ffff),
    };
    format!("{rollout}-{suffix}")
}

/// A short, stable fingerprint of a text (FNV-1a), for names and acknowledgements.
pub fn fingerprint(text: &str) -> String {
    format!("{:016x}", fnv1a(text))
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The name of an arm's Deployment and Service.
pub fn arm_name(rollout: &str, arm: Arm) -> String {
    format!("{rollout}-{arm}")
}

fn arm_labels(rollout: &str, arm: Arm) -> Value {
    json!({ROLLOUT_LABEL: rollout, ARM_LABEL: arm.to_string()})
}

/// The Deployment of one arm, running `template` (a Release's pod template) at `replicas`.
/// Rolling updates never take a pod away before its replacement is ready.
pub fn arm_deployment(
    rollout: &str,
    namespace: &str,
    owner: &Value,
    arm: Arm,
    release: &str,
    template: &Value,
    replicas: i32,
) -> Value {
    let mut template = template.clone();
    let meta = &mut template["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    for (key, value) in [
        (ROLLOUT_LABEL, rollout.to_owned()),
        (ARM_LABEL, arm.to_string()),
    ] {
        if !meta["labels"].is_object() {
            meta["labels"] = json!({});
        }
        meta["labels"][key] = Value::String(value);
    }
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][RELEASE_ANNOTATION] = Value::String(release.to_owned());
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": arm_name(rollout, arm),
            "namespace": namespace,
            "labels": arm_labels(rollout, arm),
            "annotations": {RELEASE_ANNOTATION: release},
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": arm_labels(rollout, arm)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": template,
        },
    })
}

/// The Service of one arm. Ports come from the user's Service of the target's name when there is
/// one, else from the primary container's ports.
pub fn arm_service(
    rollout: &str,
    namespace: &str,
    owner: &Value,
    arm: Arm,
    ports: &[Value],
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": arm_name(rollout, arm),
            "namespace": namespace,
            "labels": arm_labels(rollout, arm),
            "ownerReferences": [owner],
        },
        "spec": {"selector": arm_labels(rollout, arm), "ports": ports},
    })
}

/// Service ports for the arms: the user's Service's ports (name, port, targetPort, protocol), or
/// one port per container port of the primary container.
pub fn service_ports(user_service: Option<&Value>, template: &Value) -> Vec<Value> {
    let from_service: Vec<Value> = user_service
        .and_then(|s| s["spec"]["ports"].as_array())
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let mut port = json!({"port": p["port"], "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
                    for key in ["name", "targetPort", "appProtocol"] {
                        if let Some(v) = p.get(key) {
                            port[key] = v.clone();
                        }
                    }
                    port
                })
                .collect()
        })
        .unwrap_or_default();
    if !from_service.is_empty() {
        return from_service;
    }
    let ports: Vec<Value> = template["spec"]["containers"][0]["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    let n = p["containerPort"].as_i64()?;
                    let mut port = json!({"port": n, "targetPort": n, "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
                    if let Some(name) = p.get("name") {
                        port["name"] = name.clone();
                    }
                    Some(port)
                })
                .collect()
        })
        .unwrap_or_default();
    if ports.is_empty() {
        vec![json!({"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"})]
    } else {
        ports
    }
}

/// A Deployment as the state machine sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    /// Desired replicas.
    pub replicas: i32,
    /// Pods that exist, ready or not (terminating ones included until they are gone).
    pub pods: i32,
    pub ready: i32,
    /// The Release its pod template runs (annotation), and the primary image's digest.
    pub release: Option<String>,
    pub digest: Option<String>,
    /// The Deployment controller has seen the latest spec, and every pod runs it and is ready.
    pub rolled_out: bool,
    /// Ready pods of the latest template, as far as the Deployment's counts tell: the ready
    /// pods beyond those of older templates (which a `maxUnavailable: 0` update keeps ready).
    pub updated_ready: i32,
}

impl Workload {
    pub fn from_deployment(d: &Deployment) -> Workload {
        let spec = d.spec.as_ref();
        let status = d.status.clone().unwrap_or_default();
        let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
        let template = spec.map(|s| &s.template);
        let image = template
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        let release = template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RELEASE_ANNOTATION))
            .cloned();
        let ready = status.ready_replicas.unwrap_or(0);
        let pods = status.replicas.unwrap_or(0);
        let current = status.observed_generation == d.metadata.generation;
        let updated = status.updated_replicas.unwrap_or(0);
        Workload {
            replicas,
            pods,
            ready,
            release,
            digest: image.map(|i| image_digest(&i).map_or(i.clone(), str::to_owned)),
            rolled_out: current && updated == replicas && ready >= replicas && pods == replicas,
            updated_ready: if current {
                (ready - (pods - updated)).clamp(0, updated)
            } else {
                0
            },
        }
    }
}

/// Canary replicas for a weight. With a mesh, capacity in proportion to the weight (at least
/// one pod); without one the replica counts are the weight, so the canary gets
/// `stable × w / (100 − w)` pods next to the unchanged stable.
pub fn canary_replicas(stable: i32, weight: i32, mesh: bool) -> i32 {
    let (stable, weight) = (i64::from(stable.max(1)), i64::from(weight.clamp(0, 100)));
    let n = if weight == 0 {
        0
    } else if mesh {
        ((stable * weight + 99) / 100).max(1)
    } else if weight >= 100 {
        stable
    } else {
        ((stable * weight + 99 - weight) / (100 - weight)).max(1)
    };
    n as i32
}

/// The weight replica counts give: the canary's share of the pods.
pub fn replica_weight(canary: i32, stable: i32) -> i32 {
    let total = canary.max(0) + stable.max(0);
    if total == 0 {
        0
    } else {
        ((i64::from(canary.max(0)) * 100 + i64::from(total) / 2) / i64::from(total)) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::release::ReleasePhase;

    #[test]
    fn unstable_releases_and_those_in_use_are_never_pruned() {
        let r = |n: &str, p: ReleasePhase| (n.to_owned(), Some(p));
        let newest_first = vec![
            r("w-6", ReleasePhase::Stable),
            r("w-5", ReleasePhase::Superseded),
            r("w-4", ReleasePhase::Unstable),
            r("w-3", ReleasePhase::Superseded),
            r("w-2", ReleasePhase::Superseded),
            (String::from("w-1"), None),
        ];
        // historyLimit 1, the review's case: the Unstable one stays however old it is.
        assert_eq!(
            prunable(&newest_first, &["w-2".into()], 1),
            ["w-5", "w-3", "w-1"]
        );
        assert!(prunable(&newest_first, &[], 10).is_empty());
    }

    #[test]
    fn a_rollback_or_redeploy_under_way_pins_what_it_needs_until_it_ends() {
        use crate::api::rollout::{
            ManualRollback, Redeploy, ReleaseRef, RevertStep, RolloutStatus,
        };
        let at = |release: &str| ReleaseRef {
            release: release.into(),
            ..ReleaseRef::default()
        };
        let status = |step: RevertStep| RolloutStatus {
            stable: Some(at("w-b")),
            previous_stable: Some(at("w-a")),
            manual_rollback: Some(ManualRollback {
                to: Some(at("w-c-on-1")),
                redeploy: Some(Redeploy {
                    images_of: "w-c".into(),
                    config_of: "w-b".into(),
                }),
                step,
                ..ManualRollback::default()
            }),
            ..RolloutStatus::default()
        };
        let cases = [
            (
                RevertStep::Withdraw,
                vec!["w-b", "w-a", "w-c-on-1", "w-c", "w-b"],
            ),
            (
                RevertStep::Restore,
                vec!["w-b", "w-a", "w-c-on-1", "w-c", "w-b"],
            ),
            (
                RevertStep::Ready,
                vec!["w-b", "w-a", "w-c-on-1", "w-c", "w-b"],
            ),
            (
                RevertStep::Record,
                vec!["w-b", "w-a", "w-c-on-1", "w-c", "w-b"],
            ),
            (RevertStep::Done, vec!["w-b", "w-a"]),
            (RevertStep::Refused, vec!["w-b", "w-a"]),
            (RevertStep::Failed, vec!["w-b", "w-a"]),
        ];
        for (step, want) in cases {
            assert_eq!(pinned(&status(step)), want, "{step:?}");
        }
        assert!(pinned(&RolloutStatus::default()).is_empty());
    }

    #[test]
    fn only_the_rollouts_controller_reference_makes_an_object_its_own() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let reference = |uid: &str, controller| OwnerReference {
            api_version: "rollguard.dev/v1alpha1".into(),
            kind: "Rollout".into(),
            name: "web".into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: None,
        };
        assert!(controlled_by(&[reference("u1", true)], "u1"));
        assert!(
            !controlled_by(&[reference("u2", true)], "u1"),
            "another Rollout's"
        );
        assert!(
            !controlled_by(&[reference("u1", false)], "u1"),
            "owner, not controller"
        );
        assert!(!controlled_by(&[], "u1"), "the user's own Deployment");
        assert!(
            !controlled_by(&[reference("", true)], ""),
            "no uid proves nothing"
        );
    }

    #[test]
    fn init_containers_must_be_pinned_too() {
        let template = serde_json::json!({"spec": {
            "initContainers": [{"name": "migrate", "image": "registry.example/migrate:latest"}],
            "containers": [{"name": "web", "image": format!("registry.example/web@{D}")}],
        }});
        let err = artifact(&template, true).expect_err("tagged init container");
        assert!(err.contains("init container \"migrate\""), "{err}");
        assert!(artifact(&template, false).is_ok());
    }

    const D: &str = "sha256:761970999a5b4170d94169c4a8ad16a32d1c50f3ea33d859aeb05bc2d0188041";

    #[test]
    fn digests_are_read_and_tags_refused() {
        let pinned = json!({"spec": {"containers": [
            {"name": "app", "image": format!("reg.example/shop/app@{D}")},
            {"name": "proxy", "image": "reg.example/proxy:1.2"},
        ]}});
        assert!(artifact(&pinned, true).is_err(), "the sidecar is a tag");
        let a = artifact(&pinned, false).expect("tags allowed");
        assert_eq!(a.digest, D);
        assert_eq!(a.images.len(), 2);
        let tag =
            json!({"spec": {"containers": [{"name": "app", "image": "reg.example/app:1.0"}]}});
        let err = artifact(&tag, true).expect_err("tag only");
        assert!(
            err.contains("not pinned by digest") && err.contains("requireDigest"),
            "{err}"
        );
        assert_eq!(
            artifact(&tag, false).map(|a| a.digest),
            Ok("reg.example/app:1.0".into())
        );
        assert!(artifact(&json!({"spec": {}}), true).is_err());
        assert_eq!(image_digest("a@sha256:abc"), None);
        assert_eq!(image_digest(&format!("a@{}", D.to_uppercase())), None);
    }

    #[test]
    fn names_are_stable_and_short() {
        assert_eq!(release_name("checkout", D), "checkout-761970999a");
        assert_eq!(short_digest(D), "761970999a5b");
        let tagged = release_name("checkout", "reg.example/app:1.0");
        assert_eq!(tagged, release_name("checkout", "reg.example/app:1.0"));
        assert_ne!(tagged, release_name("checkout", "reg.example/app:1.1"));
        assert_eq!(short_digest("reg.example/app:1.0"), "1.0");
        assert_eq!(arm_name("checkout", Arm::Canary), "checkout-canary");
    }

    #[test]
    fn arm_deployments_select_their_arm_and_never_drop_capacity() {
        let owner = json!({"apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout", "name": "c", "uid": "u", "controller": true});
        let template = json!({"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let d = arm_deployment("c", "ns", &owner, Arm::Canary, "c-123", &template, 2);
        assert_eq!(d["spec"]["selector"]["matchLabels"][ARM_LABEL], "canary");
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app"], "c");
        assert_eq!(labels[ARM_LABEL], "canary");
        assert_eq!(
            d["spec"]["template"]["metadata"]["annotations"][RELEASE_ANNOTATION],
            "c-123"
        );
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "u");
    }

    #[test]
    fn service_ports_follow_the_users_service_or_the_container() {
        let svc = json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        let template =
            json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(
            service_ports(Some(&svc), &template),
            vec![json!({"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"})]
        );
        assert_eq!(
            service_ports(None, &template),
            vec![json!({"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"})]
        );
        assert_eq!(service_ports(None, &json!({}))[0]["port"], 80);
    }

    #[test]
    fn canary_replicas_follow_the_weight() {
        assert_eq!(canary_replicas(4, 0, true), 0);
        assert_eq!(canary_replicas(4, 5, true), 1);
        assert_eq!(canary_replicas(4, 50, true), 2);
        assert_eq!(canary_replicas(4, 100, true), 4);
        // Without a mesh the ratio is the weight: 4 stable + 1 canary is 20%.
        assert_eq!(canary_replicas(4, 20, false), 1);
        assert_eq!(canary_replicas(4, 50, false), 4);
        assert_eq!(canary_replicas(4, 5, false), 1);
        assert_eq!(replica_weight(1, 4), 20);
        assert_eq!(replica_weight(0, 4), 0);
        assert_eq!(replica_weight(0, 0), 0);
    }
}
