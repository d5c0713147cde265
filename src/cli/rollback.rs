//! `rollguard rollback`: choose a Release from the history, ask the controller to restore it,
//! and print its log as the rollback happens.

use std::time::Duration;

use anyhow::Context as _;
use kube::Api;
use kube::api::ListParams;

use crate::api::Rollout;
use crate::api::release::Release;
use crate::api::rollout::RevertStep;
use crate::history::{Standing, log_lines as lines, rollback_target, rows};
use crate::rollout::plan::{Request, RequestAction};
use crate::rollout::workload::ROLLOUT_LABEL;

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    pub rollout: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The Release to restore: its name, version, or a digest prefix (7+ hex). The newest
    /// release before the current one that can be rolled back to when unset.
    #[arg(long)]
    pub to: Option<String>,
    /// Why; recorded in both Releases' history and the Event.
    #[arg(long)]
    pub reason: Option<String>,
    /// Roll back to an Unstable Release: lifts its verdict first (recorded as your override),
    /// with this reason.
    #[arg(long)]
    pub override_reason: Option<String>,
    /// Mark the release rolled back from Unstable, with this reason. Without it, it becomes
    /// Superseded: a rollback by hand is not a verdict.
    #[arg(long)]
    pub unstable: Option<String>,
    /// Return once the request is sent, without printing the log.
    #[arg(long)]
    pub no_wait: bool,
    /// Stop waiting after this long (the rollback goes on in the controller); the Rollout's
    /// progress deadline when unset.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

pub async fn run(a: RollbackArgs) -> anyhow::Result<()> {
    let (client, ns) = crate::ops::client_and_namespace(a.namespace.clone()).await?;
    let rollouts = Api::<Rollout>::namespaced(client.clone(), &ns);
    let ro = rollouts
        .get(&a.rollout)
        .await
        .with_context(|| format!("Rollout {ns}/{}", a.rollout))?;
    let releases = Api::<Release>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={}", a.rollout)))
        .await
        .with_context(|| format!("listing the Releases of {ns}/{}", a.rollout))?;
    let history = rows(&ro, &releases.items);
    let target = rollback_target(&history, a.to.as_deref()).map_err(anyhow::Error::msg)?;
    if target.standing == Standing::Unstable {
        let Some(why) = a.override_reason.as_deref() else {
            anyhow::bail!(
                "{} is Unstable: {}; add --override-reason to lift its verdict and roll back to it",
                target.release,
                target.not_rollbackable.as_deref().unwrap_or("judged worse")
            );
        };
        let by = crate::ops::override_release(&client, &ns, &target.release, why).await?;
        println!("{}: Unstable verdict lifted by {by}: {why}", target.release);
    } else if let Some(why) = &target.not_rollbackable {
        anyhow::bail!("cannot roll back to {}: {why}", target.release);
    }
    let sent = crate::ops::submit(
        &client,
        &ns,
        &a.rollout,
        Request {
            id: String::new(),
            action: RequestAction::Rollback,
            by: String::new(),
            reason: a.reason.clone(),
            to: Some(target.release.clone()),
            unstable: a.unstable.clone(),
        },
    )
    .await?;
    println!(
        "rollback of {ns}/{} to {} ({}) sent by {} (request {})",
        a.rollout,
        target.release,
        target.version.as_deref().unwrap_or(&target.digest),
        sent.by,
        sent.id
    );
    if a.no_wait {
        return Ok(());
    }
    let timeout = a.timeout.unwrap_or_else(|| {
        Duration::from_secs(crate::time::secs(&ro.spec.progress_deadline, 600).max(1) as u64)
    });
    watch(&rollouts, &a.rollout, &sent.id, timeout).await
}

/// Prints the rollback's log lines as they appear, until it is done (Ok), refused or failed
/// (Err with its last line), or `timeout` passes.
async fn watch(
    rollouts: &Api<Rollout>,
    name: &str,
    request: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut printed = 0;
    loop {
        let mr = rollouts
            .get_status(name)
            .await
            .ok()
            .and_then(|r| r.status?.manual_rollback)
            .filter(|m| m.request == request);
        if let Some(mr) = mr {
            for line in lines(&mr).iter().skip(printed) {
                println!("{line}");
            }
            printed = mr.log.len().max(printed);
            match mr.step {
                RevertStep::Done => return Ok(()),
                RevertStep::Refused | RevertStep::Failed => {
                    let last = mr.log.last().map(|l| l.text.clone()).unwrap_or_default();
                    anyhow::bail!("{last}");
                }
                _ => {}
            }
        }
        if started.elapsed() >= timeout {
            anyhow::bail!(
                "no outcome after {}; the rollback goes on in the controller: `rollguard status {name}`",
                humantime::format_duration(Duration::from_secs(timeout.as_secs()))
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
