//! The record stage: the Rollout's status, written once per plan, and its Events.

use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::context::Context;
use crate::api::Rollout;
use crate::api::rollout::RolloutStatus;

/// A Kubernetes Event on the Rollout.
pub(super) async fn publish(ctx: &Context, ro: &Rollout, warning: bool, reason: &str, note: &str) {
    publish_as(ctx, ro, warning, reason, &action_for(reason, note), note).await;
}

/// The Event action of a note: its reason and a fingerprint of its text. The recorder folds
/// Events with the same reason and action into one series that keeps its first note, so a
/// second promotion, or a pause after a promote, must not share the first one's series; the
/// same note again still counts up its own series.
pub(super) fn action_for(reason: &str, note: &str) -> String {
    format!("{reason}-{}", crate::rollout::workload::fingerprint(note))
}

/// An Event whose `action` differs from its reason. Events with the same reason and action
/// are folded into one series that keeps the first note, so distinct subjects (one per
/// receiver, say) need distinct actions.
pub(super) async fn publish_as(
    ctx: &Context,
    ro: &Rollout,
    warning: bool,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ro.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event");
    }
}

/// Records the status with server-side apply: fields the plan dropped are removed. The write
/// is guarded by the resourceVersion the plan was made from, so a plan from a stale read (a
/// lagging cache, another writer) fails with 409 instead of undoing newer status, such as an
/// escalation already delivered. `ro` then carries the new status and resourceVersion.
pub(super) async fn record(
    api: &Api<Rollout>,
    ro: &mut Rollout,
    status: &RolloutStatus,
) -> Result<(), kube::Error> {
    if ro.status.as_ref() == Some(status) {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": "rollguard.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"resourceVersion": ro.resource_version()},
        "status": status,
    });
    let updated = api
        .patch_status(
            &ro.name_any(),
            &kube::api::PatchParams::apply("rollguard").force(),
            &kube::api::Patch::Apply(body),
        )
        .await?;
    ro.metadata.resource_version = updated.metadata.resource_version;
    ro.status = Some(status.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::action_for;

    #[test]
    fn each_distinct_note_is_its_own_event_series() {
        let first = action_for("Promoted", "promoted web-bbbbbbbbbb (bbbbbbbbbbbb)");
        let second = action_for("Promoted", "promoted web-dddddddddd (dddddddddddd)");
        assert_ne!(first, second);
        assert_eq!(
            first,
            action_for("Promoted", "promoted web-bbbbbbbbbb (bbbbbbbbbbbb)")
        );
        assert!(
            first.starts_with("Promoted-") && first.len() <= 128,
            "{first}"
        );
    }
}
