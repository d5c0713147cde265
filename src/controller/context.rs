//! What every reconcile shares: the settings, the fenced client, the metrics, the leadership
//! and the analysis runs held in memory; and the retry backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::Recorder;
use kube::{Client, ResourceExt};

use super::analysis::LiveRun;
use super::{leader, metrics};
use crate::api::Rollout;

/// Settings of `rollguard controller`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The controller's own namespace: where provider and receiver Secrets live.
    pub namespace: String,
    pub concurrency: u16,
    /// Base URL for graph links in escalations, instead of the providers' addresses.
    pub graph_url: Option<String>,
    /// The leader Lease, in `namespace`.
    pub lease_name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    /// A new canary this soon after a rollback counts as rework.
    pub rework_window: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    /// Fenced: its writes go through only while this replica leads.
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<metrics::Metrics>,
    pub leadership: Arc<leader::Leadership>,
    /// SIGTERM arrived: finish the plan in flight, start no other.
    pub(super) stopping: std::sync::atomic::AtomicBool,
    /// For escalation receivers.
    pub http: reqwest::Client,
    pub(super) recorder: Recorder,
    pub(super) runs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<LiveRun>>>>>,
    pub(super) failures: Mutex<HashMap<String, u32>>,
}

#[cfg(test)]
impl Context {
    /// A context around `client` (a mock API server), for unit tests of the shell.
    pub(crate) fn for_tests(client: Client) -> Context {
        let metrics = Arc::new(metrics::Metrics::new(86_400));
        let leadership = Arc::new(leader::Leadership::new(
            "test".into(),
            "rollguard".into(),
            Duration::from_secs(1),
            metrics.clone(),
        ));
        Context {
            recorder: Recorder::new(
                client.clone(),
                kube::runtime::events::Reporter {
                    controller: "rollguard".into(),
                    instance: None,
                },
            ),
            client,
            settings: Settings {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                namespace: "rollguard-system".into(),
                concurrency: 1,
                graph_url: None,
                lease_name: "rollguard".into(),
                lease_duration: Duration::from_secs(15),
                renew_deadline: Duration::from_secs(10),
                rework_window: Duration::from_secs(86_400),
            },
            metrics,
            leadership,
            stopping: std::sync::atomic::AtomicBool::new(false),
            http: reqwest::Client::new(),
            runs: Mutex::default(),
            failures: Mutex::default(),
        }
    }
}

/// `namespace/name`: how logs and in-memory maps name a Rollout.
pub(super) fn key(ro: &Rollout) -> String {
    format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name_any())
}

/// A seed for jitter that differs between replicas and calls.
pub fn jitter_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Exponential from 500 ms, capped at 60 s, with ±25% jitter so that many Rollouts failing
/// together do not retry together.
pub fn backoff(attempt: u32, seed: u32) -> Duration {
    let base = 500u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(7))
        .min(60_000);
    let jitter = (u64::from(seed) % 500) as i64 - 250; // per mille of base, ±25%
    let ms = base as i64 + base as i64 * jitter / 1000;
    Duration::from_millis(ms.max(100) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let ms = |n, seed| backoff(n, seed).as_millis();
        assert_eq!(ms(1, 250), 500);
        assert_eq!(ms(2, 250), 1000);
        assert_eq!(ms(20, 250), 60_000);
        assert_eq!(ms(1, 0), 375, "-25%");
        assert_eq!(ms(1, 499), 624, "+25%");
    }
}
