//! The outbox's bookkeeping, pure: which (entry, receiver) deliveries are due, what an attempt's
//! outcome does to the entry, when to look again, and the condition that sums it up.
//!
//! An entry is written to the Rollout's status before anything is sent, so a controller that
//! dies mid-send sends it again after restart, with the same dedup key and delivery id: the
//! receiver sees one incident.

use std::collections::BTreeMap;

use super::receiver::DeliveryResult;
use crate::api::rollout::{Delivery, DeliveryState, IncidentKind, OutboxAction, OutboxEntry};
use crate::rollout::workload::fingerprint;
use crate::time::format_time;

/// One send to make now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// Index into the outbox.
    pub entry: usize,
    pub receiver: String,
    /// A re-send of an open incident that the receiver already has (Alertmanager).
    pub resend: bool,
}

fn at(text: Option<&str>) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text?).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

fn settled(state: DeliveryState) -> bool {
    state != DeliveryState::Pending
}

/// Seconds before attempt `n + 1` after `n` failed ones: 2, 4, 8, 16, then every 30.
pub fn backoff(attempts: i32) -> i64 {
    (2i64 << attempts.clamp(1, 5).saturating_sub(1)).min(30)
}

/// A delivery id that stays the same across retries and restarts, so a receiver can drop
/// duplicates.
pub fn delivery_id(entry: &OutboxEntry, receiver: &str) -> String {
    fingerprint(&format!(
        "{}\n{:?}\n{receiver}",
        entry.dedup_key, entry.action
    ))
}

/// A Trigger that no Resolve has followed yet (promotions are never open).
fn open(outbox: &[OutboxEntry], entry: &OutboxEntry) -> bool {
    entry.action == OutboxAction::Trigger
        && entry.kind != IncidentKind::Promoted
        && !outbox
            .iter()
            .any(|e| e.dedup_key == entry.dedup_key && e.action == OutboxAction::Resolve)
}

/// Whether any entry may still need a send (pending, or open and so re-sent to Alertmanager):
/// without one, the Receivers need not even be read.
pub fn anything_to_do(outbox: &[OutboxEntry]) -> bool {
    outbox
        .iter()
        .any(|e| e.state == DeliveryState::Pending || open(outbox, e))
}

/// With no receiver named, pending entries stay only as the record of what happened: Skipped.
/// Returns whether any changed.
pub fn skip_unrouted(outbox: &mut [OutboxEntry]) -> bool {
    let mut changed = false;
    for e in outbox
        .iter_mut()
        .filter(|e| e.state == DeliveryState::Pending)
    {
        e.state = DeliveryState::Skipped;
        changed = true;
    }
    changed
}

/// When `(entry, receiver)` should be sent next (unix seconds), None when never again.
fn next_send(
    outbox: &[OutboxEntry],
    i: usize,
    receiver: &str,
    resend: &BTreeMap<String, i64>,
) -> Option<(i64, bool)> {
    let entry = &outbox[i];
    let delivery = entry.deliveries.iter().find(|d| d.receiver == receiver);
    // A Resolve waits until its Trigger has settled with this receiver.
    if entry.action == OutboxAction::Resolve {
        let trigger_pending = outbox.iter().any(|e| {
            e.dedup_key == entry.dedup_key
                && e.action == OutboxAction::Trigger
                && e.deliveries
                    .iter()
                    .find(|d| d.receiver == receiver)
                    .is_none_or(|d| !settled(d.state))
        });
        if trigger_pending && delivery.is_none_or(|d| !settled(d.state)) {
            return None;
        }
    }
    match delivery {
        None => Some((i64::MIN, false)),
        Some(d) if d.state == DeliveryState::Pending => {
            Some((at(d.next_attempt_at.as_deref()).unwrap_or(i64::MIN), false))
        }
        Some(d) if d.state == DeliveryState::Delivered => {
            let every = *resend.get(receiver)?;
            open(outbox, entry)
                .then(|| (at(d.last_attempt_at.as_deref()).unwrap_or(0) + every, true))
        }
        Some(_) => None,
    }
}

/// The deliveries to attempt at `now`, oldest entry first. `resend` holds the re-send interval
/// of receivers that want open incidents again and again (Alertmanager).
pub fn due(
    outbox: &[OutboxEntry],
    receivers: &[String],
    resend: &BTreeMap<String, i64>,
    now: i64,
) -> Vec<Due> {
    let mut out = Vec::new();
    for i in 0..outbox.len() {
        for r in receivers {
            if let Some((when, re)) = next_send(outbox, i, r, resend)
                && when <= now
            {
                out.push(Due {
                    entry: i,
                    receiver: r.clone(),
                    resend: re,
                });
            }
        }
    }
    out
}

/// Seconds from `now` until the next delivery is due, if any.
pub fn next_due(
    outbox: &[OutboxEntry],
    receivers: &[String],
    resend: &BTreeMap<String, i64>,
    now: i64,
) -> Option<i64> {
    (0..outbox.len())
        .flat_map(|i| {
            receivers
                .iter()
                .filter_map(move |r| next_send(outbox, i, r, resend))
        })
        .map(|(when, _)| when.saturating_sub(now).max(0))
        .min()
}

/// Records one attempt's outcome and recomputes the entry's state over `receivers`.
pub fn record(
    entry: &mut OutboxEntry,
    receivers: &[String],
    receiver: &str,
    outcome: &DeliveryResult,
    now: i64,
) {
    let position = entry.deliveries.iter().position(|d| d.receiver == receiver);
    let d = match position {
        Some(p) => &mut entry.deliveries[p],
        None => {
            entry.deliveries.push(Delivery {
                receiver: receiver.to_owned(),
                ..Delivery::default()
            });
            entry.deliveries.last_mut().expect("just pushed")
        }
    };
    let was = d.state;
    d.attempts += 1;
    d.last_attempt_at = Some(format_time(now));
    match outcome {
        DeliveryResult::Delivered => {
            d.state = DeliveryState::Delivered;
            d.delivered_at.get_or_insert_with(|| format_time(now));
            d.next_attempt_at = None;
            d.last_error = None;
        }
        DeliveryResult::Skipped => {
            d.state = DeliveryState::Skipped;
            d.next_attempt_at = None;
        }
        DeliveryResult::Retry(why) => {
            // A failed re-send leaves the receiver with what it has; the next re-send repairs it.
            if was != DeliveryState::Delivered {
                d.state = DeliveryState::Pending;
                d.next_attempt_at = Some(format_time(now + backoff(d.attempts)));
            }
            d.last_error = Some(crate::api::common::bounded(why));
        }
        DeliveryResult::Refused(why) => {
            d.state = DeliveryState::Failed;
            d.next_attempt_at = None;
            d.last_error = Some(crate::api::common::bounded(why));
        }
    }
    entry.state = aggregate(entry, receivers);
}

fn aggregate(entry: &OutboxEntry, receivers: &[String]) -> DeliveryState {
    let states: Vec<DeliveryState> = receivers
        .iter()
        .map(|r| {
            entry
                .deliveries
                .iter()
                .find(|d| &d.receiver == r)
                .map_or(DeliveryState::Pending, |d| d.state)
        })
        .collect();
    if states.contains(&DeliveryState::Pending) {
        DeliveryState::Pending
    } else if states.contains(&DeliveryState::Failed) {
        DeliveryState::Failed
    } else if states.contains(&DeliveryState::Delivered) {
        DeliveryState::Delivered
    } else {
        DeliveryState::Skipped
    }
}

/// The `EscalationDelivered` condition: true when no delivery is failing, else the failures,
/// each naming its Receiver and field.
pub fn condition(outbox: &[OutboxEntry]) -> (bool, &'static str, String) {
    let failing: Vec<String> = outbox
        .iter()
        .flat_map(|e| e.deliveries.iter())
        .filter(|d| d.last_error.is_some() && d.state != DeliveryState::Skipped)
        .filter_map(|d| d.last_error.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if failing.is_empty() {
        (true, "Delivered", "every escalation was delivered".into())
    } else if outbox.iter().any(|e| e.state == DeliveryState::Failed) {
        (false, "DeliveryRefused", failing.join("; "))
    } else {
        (false, "DeliveryFailing", failing.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escalation::fixtures::entry;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    fn t(at: i64) -> String {
        format_time(at)
    }

    #[test]
    fn a_new_entry_is_due_for_every_receiver_and_settles_per_receiver() {
        let rs = names(&["pd", "slack"]);
        let mut outbox = vec![entry(OutboxAction::Trigger, &t(100))];
        let d = due(&outbox, &rs, &BTreeMap::new(), 100);
        assert_eq!(d.len(), 2);
        assert_eq!(
            next_due(&outbox, &rs, &BTreeMap::new(), 100),
            Some(0),
            "due at once"
        );
        record(&mut outbox[0], &rs, "pd", &DeliveryResult::Delivered, 100);
        assert_eq!(
            outbox[0].state,
            DeliveryState::Pending,
            "slack still owes it"
        );
        record(
            &mut outbox[0],
            &rs,
            "slack",
            &DeliveryResult::Delivered,
            100,
        );
        assert_eq!(outbox[0].state, DeliveryState::Delivered);
        assert!(due(&outbox, &rs, &BTreeMap::new(), 1000).is_empty());
        assert_eq!(next_due(&outbox, &rs, &BTreeMap::new(), 1000), None);
    }

    #[test]
    fn retries_back_off_and_refusals_stop() {
        let rs = names(&["pd"]);
        let mut outbox = vec![entry(OutboxAction::Trigger, &t(100))];
        let mut when = 100;
        let mut waits = Vec::new();
        for _ in 0..7 {
            record(
                &mut outbox[0],
                &rs,
                "pd",
                &DeliveryResult::Retry("HTTP 503".into()),
                when,
            );
            let next = next_due(&outbox, &rs, &BTreeMap::new(), when).expect("retried");
            assert!(due(&outbox, &rs, &BTreeMap::new(), when + next - 1).is_empty());
            assert_eq!(due(&outbox, &rs, &BTreeMap::new(), when + next).len(), 1);
            waits.push(next);
            when += next;
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(outbox[0].deliveries[0].attempts, 7);
        assert_eq!(outbox[0].state, DeliveryState::Pending);
        record(
            &mut outbox[0],
            &rs,
            "pd",
            &DeliveryResult::Refused("HTTP 400".into()),
            when,
        );
        assert_eq!(outbox[0].state, DeliveryState::Failed);
        assert!(
            due(&outbox, &rs, &BTreeMap::new(), when + 1000).is_empty(),
            "400 is not retried"
        );
        let (ok, reason, message) = condition(&outbox);
        assert_eq!(
            (ok, reason, message.as_str()),
            (false, "DeliveryRefused", "HTTP 400")
        );
    }

    #[test]
    fn a_resolve_waits_for_its_trigger_with_the_same_receiver() {
        let rs = names(&["pd"]);
        let mut outbox = vec![
            entry(OutboxAction::Trigger, &t(100)),
            entry(OutboxAction::Resolve, &t(101)),
        ];
        record(
            &mut outbox[0],
            &rs,
            "pd",
            &DeliveryResult::Retry("down".into()),
            101,
        );
        assert!(
            due(&outbox, &rs, &BTreeMap::new(), 101).is_empty(),
            "the resolve must not overtake the trigger"
        );
        let d = due(&outbox, &rs, &BTreeMap::new(), 103);
        assert_eq!(d.iter().map(|d| d.entry).collect::<Vec<_>>(), vec![0]);
        record(&mut outbox[0], &rs, "pd", &DeliveryResult::Delivered, 103);
        let d = due(&outbox, &rs, &BTreeMap::new(), 103);
        assert_eq!(d.iter().map(|d| d.entry).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn alertmanager_gets_an_open_incident_again_until_it_is_resolved() {
        let rs = names(&["am", "pd"]);
        let resend = BTreeMap::from([("am".to_owned(), 60)]);
        let mut outbox = vec![entry(OutboxAction::Trigger, &t(100))];
        record(&mut outbox[0], &rs, "am", &DeliveryResult::Delivered, 100);
        record(&mut outbox[0], &rs, "pd", &DeliveryResult::Delivered, 100);
        assert!(due(&outbox, &rs, &resend, 159).is_empty());
        let d = due(&outbox, &rs, &resend, 160);
        assert_eq!(
            d,
            vec![Due {
                entry: 0,
                receiver: "am".into(),
                resend: true
            }]
        );
        assert_eq!(next_due(&outbox, &rs, &resend, 130), Some(30));
        // A failed re-send keeps it delivered, shows the error, and is tried again next interval.
        record(
            &mut outbox[0],
            &rs,
            "am",
            &DeliveryResult::Retry("cannot connect".into()),
            160,
        );
        assert_eq!(outbox[0].state, DeliveryState::Delivered);
        assert!(!condition(&outbox).0);
        record(&mut outbox[0], &rs, "am", &DeliveryResult::Delivered, 220);
        assert!(condition(&outbox).0);
        outbox.push(entry(OutboxAction::Resolve, &t(230)));
        let d = due(&outbox, &rs, &resend, 1000);
        assert!(d.iter().all(|d| d.entry == 1 && !d.resend), "{d:?}");
    }

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let trigger = entry(OutboxAction::Trigger, "a");
        let again = entry(OutboxAction::Trigger, "b");
        let resolve = entry(OutboxAction::Resolve, "a");
        assert_eq!(delivery_id(&trigger, "pd"), delivery_id(&again, "pd"));
        assert_ne!(delivery_id(&trigger, "pd"), delivery_id(&resolve, "pd"));
        assert_ne!(delivery_id(&trigger, "pd"), delivery_id(&trigger, "hook"));
    }

    #[test]
    fn only_pending_or_open_entries_need_the_receivers() {
        let rs = names(&["pd"]);
        let mut outbox = vec![entry(OutboxAction::Trigger, "a")];
        assert!(anything_to_do(&outbox), "pending");
        record(&mut outbox[0], &rs, "pd", &DeliveryResult::Delivered, 1);
        assert!(
            anything_to_do(&outbox),
            "delivered but open: Alertmanager re-sends it"
        );
        let mut resolve = entry(OutboxAction::Resolve, "b");
        record(&mut resolve, &rs, "pd", &DeliveryResult::Delivered, 2);
        outbox.push(resolve);
        assert!(!anything_to_do(&outbox), "resolved and delivered");
        let mut promoted = entry(OutboxAction::Trigger, "c");
        promoted.kind = IncidentKind::Promoted;
        record(&mut promoted, &rs, "pd", &DeliveryResult::Delivered, 3);
        assert!(!anything_to_do(&[promoted]), "a promotion is never open");
    }

    #[test]
    fn without_receivers_pending_entries_are_skipped() {
        let mut outbox = vec![
            entry(OutboxAction::Trigger, "a"),
            entry(OutboxAction::Resolve, "b"),
        ];
        outbox[1].state = DeliveryState::Delivered;
        assert!(skip_unrouted(&mut outbox));
        assert_eq!(
            outbox.iter().map(|e| e.state).collect::<Vec<_>>(),
            vec![DeliveryState::Skipped, DeliveryState::Delivered]
        );
        assert!(!skip_unrouted(&mut outbox), "nothing left to change");
    }

    #[test]
    fn skipped_everywhere_is_skipped() {
        let rs = names(&["slack"]);
        let mut e = entry(OutboxAction::Trigger, "a");
        record(&mut e, &rs, "slack", &DeliveryResult::Skipped, 1);
        assert_eq!(e.state, DeliveryState::Skipped);
    }
}
