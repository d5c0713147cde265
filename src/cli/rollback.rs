//! `rollguard rollback`: choose a Release from the history, ask the controller to restore it,
//! and print its log as the rollback happens.

use std::time::Duration;

use kube::Api;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::api::Rollout;
use crate::api::release::Release;
use crate::api::rollout::RevertStep;
use crate::history::{Standing, log_lines as lines, rollback_target, rows};
use crate::rollout::plan::{Request, RequestAction};

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    pub rollout: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The Release to restore: its name, version, or a digest prefix (7+ hex). The newest
    /// release before the current one that can be rolled back to when unset.
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub m: ManualArgs,
}

/// What `rollback` and `redeploy` share: the request's reason and marks, the preflight's
/// strictness, and how the CLI waits.
#[derive(Debug, clap::Args)]
pub struct ManualArgs {
    /// Why; recorded in the Releases' history and the Event.
    #[arg(long)]
    pub reason: Option<String>,
    /// Take an Unstable Release: lifts its verdict first (recorded as your override), with
    /// this reason.
    #[arg(long)]
    pub override_reason: Option<String>,
    /// Mark the release replaced Unstable, with this reason. Without it, it becomes
    /// Superseded: a rollback or redeploy by hand is not a verdict.
    #[arg(long)]
    pub unstable: Option<String>,
    /// Refuse when the preflight warns (rollback: a ConfigMap that changed since the release,
    /// a Secret, a volume on a claim, a schema migration since; redeploy: a schema migration
    /// since).
    #[arg(long)]
    pub strict: bool,
    /// Return once the request is sent, without printing the log.
    #[arg(long)]
    pub no_wait: bool,
    /// `json`: one object at the end with the request, the warnings (and a redeploy's
    /// differences), the outcome and the log.
    #[arg(short = 'o', long, value_enum, default_value_t = super::args::Output::Text)]
    pub output: super::args::Output,
    /// Stop waiting after this long (it goes on in the controller); the Rollout's progress
    /// deadline when unset.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

pub async fn run(a: RollbackArgs) -> anyhow::Result<()> {
    let (client, ns) = crate::ops::client_and_namespace(a.namespace.clone()).await?;
    let (ro, releases) = crate::ops::rollout_and_releases(&client, &ns, &a.rollout).await?;
    let history = rows(&ro, &releases);
    let target = rollback_target(&history, a.to.as_deref()).map_err(anyhow::Error::msg)?;
    lift_or_refuse(
        &client,
        &ns,
        target,
        a.m.override_reason.as_deref(),
        "roll back to",
    )
    .await?;
    let warnings = preflight(&client, &ns, &releases, &target.release).await;
    let json = a.m.output == super::args::Output::Json;
    for w in &warnings {
        if !json {
            println!("warning: {w}");
        }
    }
    if a.m.strict && !warnings.is_empty() {
        anyhow::bail!(
            "refused by --strict: the preflight found {} thing(s) the rollback cannot restore",
            warnings.len()
        );
    }
    let request = Request {
        id: String::new(),
        action: RequestAction::Rollback,
        by: String::new(),
        reason: a.m.reason.clone(),
        to: Some(target.release.clone()),
        unstable: a.m.unstable.clone(),
        warnings,
    };
    let label = target.version.as_deref().unwrap_or(&target.digest);
    send_and_follow(&client, &ns, &ro, request, label, &a.m, &[]).await
}

/// Sends a rollback or redeploy request, then prints its log as it happens (or, with `-o json`,
/// one object at the end), and fails with its last line when it is refused or fails.
pub(super) async fn send_and_follow(
    client: &kube::Client,
    ns: &str,
    ro: &Rollout,
    request: Request,
    label: &str,
    follow: &ManualArgs,
    diff: &[String],
) -> anyhow::Result<()> {
    let name = ro.metadata.name.clone().unwrap_or_default();
    let rollouts = Api::<Rollout>::namespaced(client.clone(), ns);
    let json = follow.output == super::args::Output::Json;
    let (action, to, warnings) = (
        request.action,
        request.to.clone().unwrap_or_default(),
        request.warnings.clone(),
    );
    let sent = crate::ops::submit(client, ns, &name, request).await?;
    if !json {
        println!(
            "{action} of {ns}/{name} to {to} ({label}) sent by {} (request {})",
            sent.by, sent.id
        );
    }
    let timeout = follow.timeout.unwrap_or_else(|| {
        Duration::from_secs(crate::time::secs(&ro.spec.progress_deadline, 600).max(1) as u64)
    });
    let outcome = if follow.no_wait {
        Ok(None)
    } else {
        watch(&rollouts, &name, &sent.id, timeout, !json).await
    };
    if json {
        let (state, record) = match &outcome {
            Ok(record) => ("sent", record.clone()),
            Err(_) => ("failed", None),
        };
        let state = record
            .as_ref()
            .map_or(state.to_owned(), |m| m.step.to_string());
        let out = serde_json::json!({
            "request": sent.id,
            "action": action.to_string(),
            "by": sent.by,
            "to": to,
            "warnings": warnings,
            "differences": diff,
            "outcome": state,
            "error": outcome.as_ref().err().map(ToString::to_string),
            "log": record.as_ref().map(lines).unwrap_or_default(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    outcome.map(drop)
}

/// An Unstable target's verdict lifted with the caller's reason (recorded as their override),
/// or the reason the target cannot be taken.
pub(super) async fn lift_or_refuse(
    client: &kube::Client,
    ns: &str,
    target: &crate::history::HistoryRow,
    override_reason: Option<&str>,
    verb: &str,
) -> anyhow::Result<()> {
    if target.standing == Standing::Unstable {
        let Some(why) = override_reason else {
            anyhow::bail!(
                "{} is Unstable: {}; add --override-reason to lift its verdict and {verb} it",
                target.release,
                target.not_rollbackable.as_deref().unwrap_or("judged worse")
            );
        };
        let by = crate::ops::override_release(client, ns, &target.release, why).await?;
        println!("{}: Unstable verdict lifted by {by}: {why}", target.release);
    } else if let Some(why) = &target.not_rollbackable {
        anyhow::bail!("cannot {verb} {}: {why}", target.release);
    }
    Ok(())
}

/// What the rollback to `target` cannot restore: the recorded ConfigMap hashes against
/// today's (read as the caller), Secrets, volumes on claims, and schema migrations of the
/// releases deployed after it.
pub(super) async fn preflight(
    client: &kube::Client,
    ns: &str,
    releases: &[Release],
    target: &str,
) -> Vec<String> {
    let Some(t) = releases
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(target))
    else {
        return Vec::new();
    };
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let mut now = std::collections::BTreeMap::new();
    let mut unread = Vec::new();
    for h in &t.spec.config_hashes {
        if h.kind != crate::api::release::ConfigKind::ConfigMap {
            continue;
        }
        match api.get_opt(&h.name).await {
            Ok(cm) => {
                now.insert(h.name.clone(), cm.map(crate::preflight::config_map_hash));
            }
            Err(e) => {
                // Not compared: say so instead of guessing.
                now.insert(h.name.clone(), h.sha256.clone());
                unread.push(format!(
                    "ConfigMap {} could not be read to compare ({e})",
                    h.name
                ));
            }
        }
    }
    let since = crate::preflight::released_after(releases, t);
    let mut warnings = crate::preflight::warnings(t, &now, &since);
    warnings.extend(unread);
    warnings.truncate(crate::rollout::plan::MAX_WARNINGS);
    warnings
}

/// Prints the rollback's log lines as they appear (when `print`), until it is done (Ok with
/// its record), refused or failed (Err with its last line), or `timeout` passes.
async fn watch(
    rollouts: &Api<Rollout>,
    name: &str,
    request: &str,
    timeout: Duration,
    print: bool,
) -> anyhow::Result<Option<crate::api::rollout::ManualRollback>> {
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
            if print {
                for line in lines(&mr).iter().skip(printed) {
                    println!("{line}");
                }
            }
            printed = mr.log.len().max(printed);
            match mr.step {
                RevertStep::Done => return Ok(Some(mr)),
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
