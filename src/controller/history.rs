//! A Release's history: who did what to it, appended once, capped, and safe against two writers.

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::context::jitter_seed;
use crate::api::release::{HistoryEntry, Release};

/// The most history entries a Release keeps; the oldest go first.
pub const HISTORY_LIMIT: usize = 256;

/// `history` with `entry` appended once (a replayed action adds nothing), capped.
pub fn appended(mut history: Vec<HistoryEntry>, entry: &HistoryEntry) -> Vec<HistoryEntry> {
    if !history.contains(entry) {
        history.push(entry.clone());
    }
    let excess = history.len().saturating_sub(HISTORY_LIMIT);
    history.drain(..excess);
    history
}

/// Appends `entry` to a Release's history, with `also` merged into its status in the same
/// write. The write carries the resourceVersion it was read at, so two writers (the
/// controller and `rollguard override`) cannot drop each other's entries: the loser re-reads
/// and tries again.
pub async fn record_history(
    api: &Api<Release>,
    release: &str,
    entry: &HistoryEntry,
    also: serde_json::Value,
) -> Result<(), kube::Error> {
    let mut attempt = 0;
    loop {
        let r = api.get(release).await?;
        let history = appended(r.status.unwrap_or_default().history, entry);
        let mut status = json!({"history": history});
        if let (Some(s), Some(extra)) = (status.as_object_mut(), also.as_object()) {
            s.extend(extra.clone());
        }
        let patch = json!({
            "metadata": {"resourceVersion": r.metadata.resource_version},
            "status": status,
        });
        match api
            .patch_status(release, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 10 => {
                attempt += 1;
                // Writers that collided should not collide again in lockstep.
                let spread = u64::from(jitter_seed() % 50);
                tokio::time::sleep(std::time::Duration::from_millis(10 + spread)).await;
            }
            other => return other.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_appends_once_and_keeps_the_newest() {
        let entry = |i: usize| HistoryEntry {
            action: "promoted".into(),
            by: "rollguard".into(),
            at: format!("t{i}"),
            reason: None,
        };
        let once = appended(Vec::new(), &entry(0));
        assert_eq!(
            appended(once.clone(), &entry(0)),
            once,
            "a replay adds nothing"
        );
        let full: Vec<HistoryEntry> = (0..HISTORY_LIMIT).map(entry).collect();
        let more = appended(full, &entry(HISTORY_LIMIT));
        assert_eq!(more.len(), HISTORY_LIMIT);
        assert_eq!(more[0], entry(1), "the oldest goes");
        assert_eq!(more.last(), Some(&entry(HISTORY_LIMIT)));
    }
}
