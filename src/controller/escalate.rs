//! Delivery of the outbox: the shell around [`crate::escalation`].
//!
//! After a reconcile recorded its plan, the entries the machine wrote are due. Each due
//! (entry, receiver) is rendered, sent, and its outcome recorded in status, so nothing is lost
//! when the controller stops between a send and its record: the entry is sent again with the
//! same dedup key and delivery id.

use std::collections::BTreeMap;

use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::context::{Context, key};
use super::record::{publish_as, record};
use crate::api::Rollout;
use crate::api::endpoints::{Receiver, namespace_allowed};
use crate::api::release::Release;
use crate::escalation::incident::{Sources, build as incident};
use crate::escalation::outbox::{
    anything_to_do, condition, delivery_id, due, next_due, record as note, skip_unrouted,
};
use crate::escalation::receiver::{DeliveryResult, Notifier, build, referenced_secrets};
use crate::escalation::send::post;
use crate::rollout::set_condition;
use crate::rollout::workload::ROLLOUT_LABEL;
use crate::secrets::read_secrets;

/// Loads a Receiver object and builds it for a Rollout in `namespace`, or gives the outcome
/// every delivery to it has: retried while it may be fixed (a missing Secret), refused when the
/// Receiver does not admit the namespace.
async fn receiver(
    ctx: &Context,
    name: &str,
    namespace: &str,
) -> Result<Box<dyn Notifier>, DeliveryResult> {
    let object = Api::<Receiver>::all(ctx.client.clone())
        .get_opt(name)
        .await
        .map_err(|e| DeliveryResult::Retry(format!("Receiver {name}: reading it: {e}")))?
        .ok_or_else(|| {
            DeliveryResult::Retry(format!(
                "Receiver {name} does not exist (spec.escalation.receivers names it)"
            ))
        })?;
    if !namespace_allowed(&object.spec.allowed_namespaces, namespace) {
        return Err(DeliveryResult::Refused(format!(
            "Receiver {name}: spec.allowedNamespaces does not include namespace {namespace}; \
             its owner must add it"
        )));
    }
    let data = read_secrets(
        &ctx.client,
        &ctx.settings.namespace,
        referenced_secrets(&object.spec),
    )
    .await
    .map_err(|e| DeliveryResult::Retry(format!("Receiver {name}: {e}")))?;
    build(name, &object.spec, &data, &ctx.settings.namespace).map_err(DeliveryResult::Retry)
}

/// Sends what is due for `ro` and records the outcomes. Returns the seconds until the next
/// delivery is due, if any.
pub async fn deliver(ctx: &Context, ro: &mut Rollout) -> Result<Option<u64>, kube::Error> {
    let Some(mut status) = ro.status.clone() else {
        return Ok(None);
    };
    if !anything_to_do(&status.outbox) {
        return Ok(None);
    }
    let names: Vec<String> = ro
        .spec
        .escalation
        .as_ref()
        .map(|e| e.receivers.clone())
        .unwrap_or_default();
    let now = crate::time::unix_now();
    if names.is_empty() {
        if skip_unrouted(&mut status.outbox) {
            save(ctx, ro, status).await?;
        }
        return Ok(None);
    }
    let namespace = ro.namespace().unwrap_or_default();
    let mut receivers: BTreeMap<String, Result<Box<dyn Notifier>, DeliveryResult>> =
        BTreeMap::new();
    for name in &names {
        receivers.insert(name.clone(), receiver(ctx, name, &namespace).await);
    }
    let resend: BTreeMap<String, i64> = receivers
        .iter()
        .filter_map(|(n, r)| Some((n.clone(), r.as_ref().ok()?.resend_every()?)))
        .collect();
    let todo = due(&status.outbox, &names, &resend, now);
    // A replica that stopped leading sends nothing: the leader sends it, once.
    if !todo.is_empty() && !ctx.leadership.may_write() {
        return Ok(None);
    }
    if !todo.is_empty() {
        let ns = ro.namespace().unwrap_or_default();
        let name = ro.name_any();
        let releases = Api::<Release>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}")))
            .await?
            .items;
        let sources = Sources {
            namespace: &ns,
            rollout: &name,
            spec: &ro.spec,
            status: &status,
            releases: &releases,
            graph_base: ctx.settings.graph_url.as_deref(),
        };
        let stamp = crate::time::format_time(now);
        let sends = todo.iter().map(|d| {
            let entry = &status.outbox[d.entry];
            let incident = incident(&sources, entry);
            let id = delivery_id(entry, &d.receiver);
            let target = receivers.get(&d.receiver);
            let stamp = &stamp;
            async move {
                match target {
                    Some(Ok(r)) => match r.request(&incident, &id, stamp, now) {
                        Some(req) => post(&ctx.http, r.as_ref(), req).await,
                        None => DeliveryResult::Skipped,
                    },
                    Some(Err(outcome)) => outcome.clone(),
                    None => {
                        DeliveryResult::Retry(format!("Receiver {} was not loaded", d.receiver))
                    }
                }
            }
        });
        let outcomes = futures::future::join_all(sends).await;
        for (d, outcome) in todo.iter().zip(outcomes) {
            let entry = &mut status.outbox[d.entry];
            let before = entry
                .deliveries
                .iter()
                .find(|x| x.receiver == d.receiver)
                .and_then(|x| x.last_error.clone());
            note(entry, &names, &d.receiver, &outcome, now);
            let (word, problem) = match &outcome {
                DeliveryResult::Delivered => ("delivered", None),
                DeliveryResult::Skipped => ("skipped", None),
                DeliveryResult::Retry(why) => ("retry", Some(why)),
                DeliveryResult::Refused(why) => ("refused", Some(why)),
            };
            ctx.metrics.escalation(&d.receiver, word);
            match problem {
                Some(why) if before.as_ref() != Some(why) => {
                    tracing::warn!(rollout = %key(ro), receiver = %d.receiver, key = %entry.dedup_key, "{why}");
                    let action = format!("Escalate/{}", d.receiver);
                    publish_as(ctx, ro, true, "EscalationFailed", &action, why).await;
                }
                None if word == "delivered" && !d.resend => {
                    tracing::info!(rollout = %key(ro), receiver = %d.receiver, key = %entry.dedup_key, action = ?entry.action, "escalation delivered");
                }
                _ => {}
            }
        }
    }
    let (ok, reason, message) = condition(&status.outbox);
    set_condition(
        &mut status,
        "EscalationDelivered",
        ok,
        reason,
        &message,
        now,
    );
    let next = next_due(&status.outbox, &names, &resend, now);
    save(ctx, ro, status).await?;
    Ok(next.map(|s| s.max(1) as u64))
}

async fn save(
    ctx: &Context,
    ro: &mut Rollout,
    status: crate::api::rollout::RolloutStatus,
) -> Result<(), kube::Error> {
    let api = Api::<Rollout>::namespaced(ctx.client.clone(), &ro.namespace().unwrap_or_default());
    record(&api, ro, &status).await?;
    ro.status = Some(status);
    Ok(())
}
