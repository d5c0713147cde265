//! Leader election on a Lease, and the write fence that makes "only the leader writes" hold
//! even for work already queued or in flight.
//!
//! Every replica runs the same watches, so a standby's caches are warm; only the replica whose
//! fence is open reconciles. The election itself is kube-lease-manager's. The fence is ours: it
//! is a tower layer on the controller's Kubernetes client that refuses every request other than
//! a read unless, at the moment of the request,
//!
//! - the lease manager says this replica was elected,
//! - the Lease, as last seen on a watch, names this replica as its holder,
//! - and that holder's last renewal is recent enough that no other replica can have taken over:
//!   `now < renewTime + leaseDuration - margin`.
//!
//! The last rule needs no message from anyone. A replica frozen by SIGSTOP, or starved, finds
//! its fence closed the moment it runs again, before the lease manager has noticed anything.
//! Writes that were planned from an older read also carry a resourceVersion (status, route
//! weights), so they fail with 409 whoever sends them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;

use super::metrics::Metrics;

/// The Lease as the fence needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// The holder's last renewal, microseconds since the epoch.
    pub renewed_micros: i64,
    pub duration_secs: i64,
}

impl LeaseView {
    pub fn from_lease(lease: &Lease) -> LeaseView {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseView {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renewed_micros: spec.renew_time.map_or(0, |t| t.0.as_microsecond()),
            duration_secs: i64::from(spec.lease_duration_seconds.unwrap_or(0)),
        }
    }
}

/// Until when (microseconds since the epoch) `me` may write on the strength of `view`; `None`
/// when it may not write at all.
pub fn write_deadline(view: Option<&LeaseView>, me: &str, margin: Duration) -> Option<i64> {
    let v = view?;
    if v.holder.as_deref() != Some(me) || v.duration_secs <= 0 {
        return None;
    }
    Some(v.renewed_micros + v.duration_secs * 1_000_000 - margin.as_micros() as i64)
}

/// The fence's rule, pure: elected, not stopping, named holder, and renewed recently enough.
pub fn fence_open(
    elected: bool,
    stopping: bool,
    view: Option<&LeaseView>,
    me: &str,
    margin: Duration,
    now_micros: i64,
) -> bool {
    elected && !stopping && write_deadline(view, me, margin).is_some_and(|d| now_micros < d)
}

/// Lease flags that cannot work together.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error(
        "--lease-duration {}: at least 2s, in whole seconds (the Lease counts seconds)",
        humantime::format_duration(*.0)
    )]
    LeaseTooShort(Duration),
    #[error(
        "--renew-deadline {} must be at least 1s and shorter than --lease-duration {}",
        humantime::format_duration(*renew),
        humantime::format_duration(*lease)
    )]
    RenewDeadline { renew: Duration, lease: Duration },
}

/// How the lease manager's timing follows from the controller's flags: it renews
/// `renew_deadline` after the last renewal, so its grace is the difference; the fence closes
/// halfway through that grace, so a renewal that is a little late does not close it, and a
/// replica that missed its renewal stops writing well before anyone else may take over.
pub fn timing(lease_duration: Duration, renew_deadline: Duration) -> Result<Timing, TimingError> {
    let duration = lease_duration.as_secs();
    let renew = renew_deadline.as_secs();
    if duration < 2 {
        return Err(TimingError::LeaseTooShort(lease_duration));
    }
    if renew == 0 || renew >= duration {
        return Err(TimingError::RenewDeadline {
            renew: renew_deadline,
            lease: lease_duration,
        });
    }
    let grace = duration - renew;
    Ok(Timing {
        duration_secs: duration,
        grace_secs: grace,
        margin: Duration::from_millis(grace * 500),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub duration_secs: u64,
    pub grace_secs: u64,
    pub margin: Duration,
}

/// This replica's standing, shared by the fence, the reconciler and `/readyz`.
pub struct Leadership {
    pub identity: String,
    pub lease: String,
    margin: Duration,
    elected: AtomicBool,
    stopping: AtomicBool,
    view: Mutex<Option<LeaseView>>,
    leading: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Leadership {
    pub fn new(identity: String, lease: String, margin: Duration, metrics: Arc<Metrics>) -> Self {
        Leadership {
            identity,
            lease,
            margin,
            elected: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            view: Mutex::new(None),
            leading: watch::channel(false).0,
            metrics,
        }
    }

    /// Whether this replica may write now. Checked by the fence before every write.
    pub fn may_write(&self) -> bool {
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        fence_open(
            self.elected.load(Ordering::SeqCst),
            self.stopping.load(Ordering::SeqCst),
            view.as_ref(),
            &self.identity,
            self.margin,
            now_micros(),
        )
    }

    /// Flips to true each time this replica starts leading, and to false when it stops.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Closes the fence for good: the process is shutting down.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.refresh();
    }

    fn set_elected(&self, elected: bool) {
        self.elected.store(elected, Ordering::SeqCst);
        self.refresh();
    }

    fn set_view(&self, view: Option<LeaseView>) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
        self.refresh();
    }

    /// When the fence closes by itself unless a renewal is seen first; None when it is closed
    /// already (nothing to wake up for until the Lease changes).
    fn closes_in(&self) -> Option<Duration> {
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = write_deadline(view.as_ref(), &self.identity, self.margin)?;
        let left = deadline - now_micros();
        (left > 0).then(|| Duration::from_micros(left as u64))
    }

    fn refresh(&self) {
        let now = self.may_write();
        let was = *self.leading.borrow();
        if now != was {
            if now {
                tracing::info!(identity = %self.identity, lease = %self.lease, "leading: this replica reconciles and writes");
            } else {
                tracing::warn!(identity = %self.identity, lease = %self.lease, "not leading: writes are fenced off");
            }
            self.metrics.leader(now);
            self.leading.send_replace(now);
        }
    }

    /// Counts a write the fence let through (`ok` or `failed`) or refused (`fenced`).
    fn count(&self, outcome: &str) {
        self.metrics.write(outcome);
    }
}

/// The error a fenced write fails with.
#[derive(Debug, thiserror::Error)]
#[error("write fenced off: replica {identity} does not hold Lease {lease}")]
pub struct Fenced {
    identity: String,
    lease: String,
}

/// Whether an error (anywhere in its chain) is the fence's.
pub fn is_fenced(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<Fenced>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A replica standing for leader: kube-lease-manager competes for the Lease, and a watch on
/// the Lease keeps [`Leadership`]'s view current.
pub struct Election {
    leadership: Arc<Leadership>,
    client: Client,
    namespace: String,
    timing: Timing,
    elected: watch::Receiver<bool>,
    task: ManagerTask,
    events: futures::stream::BoxStream<'static, Result<Event<Lease>, watcher::Error>>,
}

type ManagerTask =
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>;

/// A lease manager competing for the Lease, in its own task; the receiver says whether it won.
async fn compete(
    client: &Client,
    namespace: &str,
    leadership: &Leadership,
    timing: Timing,
) -> anyhow::Result<(watch::Receiver<bool>, ManagerTask)> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &leadership.lease)
        .with_namespace(namespace)
        .with_identity(&leadership.identity)
        .with_duration(timing.duration_secs)
        .with_grace(timing.grace_secs)
        .build()
        .await
        .map_err(|e| anyhow::anyhow!(lease_error(namespace, &leadership.lease, &e)))?;
    Ok(manager.watch().await)
}

/// One sentence with the fix, for an error reading or creating the leader Lease: the
/// apiserver's message, not its debug form.
pub fn lease_error(
    namespace: &str,
    lease: &str,
    e: &kube_lease_manager::LeaseManagerError,
) -> String {
    let api = match e {
        kube_lease_manager::LeaseManagerError::KubeError(kube::Error::Api(s)) => Some(s),
        _ => None,
    };
    match api {
        Some(s) if s.code == 404 => format!(
            "the namespace {namespace} for the leader Lease does not exist: create it \
             (kubectl create namespace {namespace}) or pass --namespace with the controller's namespace"
        ),
        Some(s) if s.code == 403 => format!(
            "the controller may not use Lease {namespace}/{lease}: it needs get, list, watch, \
             create, update and patch on leases in {namespace} ({})",
            s.message
        ),
        Some(s) => format!("Lease {namespace}/{lease}: {} ({})", s.message, s.reason),
        None => format!(
            "Lease {namespace}/{lease}: {e}; --namespace must exist, and the controller needs get, \
             list, watch, create, update and patch on leases there"
        ),
    }
}

/// Creates the Lease when it is missing and starts competing for it. `client` must be
/// unfenced: the Lease is how a replica earns the right to write. Fails at once when the Lease
/// cannot be read or created, rather than running a controller that can never lead.
pub async fn stand(
    client: Client,
    namespace: &str,
    leadership: Arc<Leadership>,
    timing: Timing,
) -> anyhow::Result<Election> {
    let (elected, task) = compete(&client, namespace, &leadership, timing).await?;
    let events = watcher::watcher(
        Api::<Lease>::namespaced(client.clone(), namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", leadership.lease)),
    )
    .default_backoff()
    .boxed();
    tracing::info!(identity = %leadership.identity, lease = %format!("{namespace}/{}", leadership.lease), duration_s = timing.duration_secs, grace_s = timing.grace_secs, "standing for leader");
    Ok(Election {
        leadership,
        client,
        namespace: namespace.to_owned(),
        timing,
        elected,
        task,
        events,
    })
}

impl Election {
    /// Follows the election until `shutdown` resolves, closing the fence on time when no
    /// renewal is seen; then closes it for good and releases the Lease, so that a standby
    /// takes over at once instead of after the lease duration.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let leadership = self.leadership.clone();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let closes = leadership.closes_in().unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                () = &mut shutdown => break,
                changed = self.elected.changed() => {
                    if changed.is_err() {
                        tracing::error!("the lease manager stopped; this replica no longer stands for leader");
                        break;
                    }
                    let now = *self.elected.borrow_and_update();
                    leadership.set_elected(now);
                }
                event = self.events.next() => match event {
                    Some(Ok(Event::Apply(l) | Event::InitApply(l))) => {
                        let view = LeaseView::from_lease(&l);
                        let released = view.holder.is_none();
                        leadership.set_view(Some(view));
                        if released && !*self.elected.borrow() {
                            self.take_released().await;
                        }
                    }
                    Some(Ok(Event::Delete(_))) => leadership.set_view(None),
                    Some(Ok(Event::Init | Event::InitDone)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "watching the Lease"),
                    None => break,
                },
                () = tokio::time::sleep(closes + Duration::from_millis(1)) => leadership.refresh(),
            }
        }
        leadership.stop();
        leadership.set_elected(false);
        self.release().await;
    }

    /// The leader released the Lease (it is shutting down). The lease manager, not holding
    /// it, sleeps until the old claim would have expired; a fresh one reads the Lease at once
    /// and takes it, so a handover after SIGTERM takes a round trip, not the lease duration.
    async fn take_released(&mut self) {
        match compete(&self.client, &self.namespace, &self.leadership, self.timing).await {
            Ok((elected, task)) => {
                tracing::info!(lease = %self.leadership.lease, "the Lease was released; competing for it now");
                // Stopped, not dropped: a dropped receiver makes the old manager release the
                // Lease as it leaves, and with the same identity it could release the claim
                // the new one just made.
                self.task.abort();
                self.elected = elected;
                self.task = task;
            }
            Err(e) => tracing::warn!(error = %e, "competing for the released Lease"),
        }
    }

    async fn release(self) {
        let leadership = self.leadership;
        drop(self.elected);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!(lease = %leadership.lease, "Lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the Lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the lease manager task"),
            Err(_) => tracing::warn!(
                "releasing the Lease timed out; a standby takes over when it expires"
            ),
        }
    }
}

/// The identity this replica stands with: the pod's name in a cluster, else host and process.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "rollguard".into());
            format!("{host}-{}", std::process::id())
        })
}

/// The fence as a tower layer for the controller's client.
#[derive(Clone)]
pub struct FenceLayer(pub Arc<Leadership>);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fence<S>;
    fn layer(&self, inner: S) -> Fence<S> {
        Fence {
            inner,
            leadership: self.0.clone(),
        }
    }
}

pub struct Fence<S> {
    inner: S,
    leadership: Arc<Leadership>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<kube::client::Body>> for Fence<S>
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: 'static,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let write = !matches!(
            *req.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        if write && !self.leadership.may_write() {
            self.leadership.count("fenced");
            let err = Fenced {
                identity: self.leadership.identity.clone(),
                lease: self.leadership.lease.clone(),
            };
            tracing::debug!(target: "rollguard::writes", "fenced {} {}: {err}", req.method(), req.uri().path());
            return Box::pin(async move { Err(Box::new(err) as BoxError) });
        }
        let what = write.then(|| format!("{} {}", req.method(), req.uri().path()));
        let response = self.inner.call(req);
        let leadership = self.leadership.clone();
        Box::pin(async move {
            let result = response.await.map_err(Into::into);
            if let Some(what) = what {
                let status = result.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                let ok = (200..300).contains(&status);
                leadership.count(if ok { "ok" } else { "failed" });
                tracing::debug!(target: "rollguard::writes", status, "write {what}");
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    fn view(holder: &str, renewed_s: i64) -> LeaseView {
        LeaseView {
            holder: Some(holder.into()),
            renewed_micros: renewed_s * SEC,
            duration_secs: 15,
        }
    }

    #[test]
    fn the_fence_opens_only_for_the_elected_named_freshly_renewed_holder() {
        let margin = Duration::from_millis(2500);
        let v = view("a", 1000);
        let open = |elected, stopping, v: Option<&LeaseView>, me, now_s: f64| {
            fence_open(
                elected,
                stopping,
                v,
                me,
                margin,
                (now_s * SEC as f64) as i64,
            )
        };
        assert!(open(true, false, Some(&v), "a", 1000.0));
        assert!(open(true, false, Some(&v), "a", 1012.4));
        assert!(
            !open(true, false, Some(&v), "a", 1012.5),
            "closes 2.5 s before expiry"
        );
        assert!(
            !open(true, false, Some(&v), "a", 5000.0),
            "thawed after SIGSTOP"
        );
        assert!(
            !open(true, false, Some(&v), "b", 1001.0),
            "someone else holds it"
        );
        assert!(!open(false, false, Some(&v), "a", 1001.0), "not elected");
        assert!(!open(true, true, Some(&v), "a", 1001.0), "shutting down");
        assert!(!open(true, false, None, "a", 1001.0), "no Lease seen yet");
        let released = LeaseView {
            holder: None,
            ..v.clone()
        };
        assert!(!open(true, false, Some(&released), "a", 1001.0));
    }

    #[test]
    fn the_deadline_follows_each_renewal() {
        let margin = Duration::from_millis(2500);
        assert_eq!(
            write_deadline(Some(&view("a", 1000)), "a", margin),
            Some(1012 * SEC + SEC / 2)
        );
        assert_eq!(
            write_deadline(Some(&view("a", 1010)), "a", margin),
            Some(1022 * SEC + SEC / 2)
        );
        let never = LeaseView {
            duration_secs: 0,
            ..view("a", 1000)
        };
        assert_eq!(write_deadline(Some(&never), "a", margin), None);
    }

    #[test]
    fn timing_derives_grace_and_margin_and_refuses_nonsense() {
        let t = timing(Duration::from_secs(15), Duration::from_secs(10)).expect("valid");
        assert_eq!(
            t,
            Timing {
                duration_secs: 15,
                grace_secs: 5,
                margin: Duration::from_millis(2500)
            }
        );
        let e = timing(Duration::from_secs(10), Duration::from_secs(10)).expect_err("equal");
        assert!(e.to_string().contains("--renew-deadline 10s"), "{e}");
        assert!(timing(Duration::from_millis(1500), Duration::from_secs(1)).is_err());
        assert!(timing(Duration::from_secs(15), Duration::from_millis(500)).is_err());
    }

    #[tokio::test]
    async fn the_fence_passes_reads_and_refuses_writes_unless_leading() {
        use tower::{Layer as _, Service as _, ServiceExt as _};
        let metrics = Arc::new(Metrics::default());
        let l = Arc::new(Leadership::new(
            "me".into(),
            "lease".into(),
            Duration::from_secs(1),
            metrics.clone(),
        ));
        let inner = tower::service_fn(|_: http::Request<kube::client::Body>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        });
        let mut svc = FenceLayer(l.clone()).layer(inner);
        let req = |m: http::Method| {
            http::Request::builder()
                .method(m)
                .uri("/api/v1/namespaces/shop/services/web")
                .body(kube::client::Body::from(Vec::new()))
                .expect("request")
        };
        let mut call = async |m| svc.ready().await.expect("ready").call(req(m)).await;
        assert!(call(http::Method::GET).await.is_ok(), "a standby reads");
        let refused = call(http::Method::PATCH)
            .await
            .expect_err("a standby may not write");
        assert!(refused.is::<Fenced>(), "{refused}");
        l.set_elected(true);
        l.set_view(Some(LeaseView {
            holder: Some("me".into()),
            renewed_micros: now_micros(),
            duration_secs: 15,
        }));
        assert!(l.may_write());
        assert!(call(http::Method::PATCH).await.is_ok(), "the leader writes");
        assert!(call(http::Method::DELETE).await.is_ok());
        l.stop();
        assert!(call(http::Method::POST).await.is_err(), "stopping: fenced");
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(r#"rollguard_kube_writes_total{outcome="fenced"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rollguard_kube_writes_total{outcome="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains("rollguard_leader 0"), "{text}");
    }

    #[test]
    fn the_timer_waits_for_the_deadline_and_not_past_it() {
        let l = Leadership::new(
            "me".into(),
            "lease".into(),
            Duration::from_millis(2500),
            Arc::new(Metrics::default()),
        );
        assert_eq!(l.closes_in(), None, "no Lease seen");
        l.set_view(Some(LeaseView {
            holder: Some("me".into()),
            renewed_micros: now_micros(),
            duration_secs: 15,
        }));
        let left = l.closes_in().expect("open");
        assert!(
            left <= Duration::from_millis(12_500) && left > Duration::from_secs(12),
            "{left:?}"
        );
        // A renewal long missed (an apiserver outage): closed, and no timer spinning on it.
        l.set_view(Some(LeaseView {
            holder: Some("me".into()),
            renewed_micros: now_micros() - 60 * SEC,
            duration_secs: 15,
        }));
        assert_eq!(l.closes_in(), None);
    }

    #[test]
    fn a_fenced_error_is_found_inside_kube_errors() {
        let fenced = Fenced {
            identity: "a".into(),
            lease: "l".into(),
        };
        let e = kube::Error::Service(Box::new(fenced));
        assert!(is_fenced(&e));
        assert_eq!(
            e.to_string(),
            "ServiceError: write fenced off: replica a does not hold Lease l"
        );
        let other = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert!(!is_fenced(&other));
    }
}
