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
    /// Refuse when the preflight finds anything the rollback cannot restore (a ConfigMap that
    /// changed since the release, a Secret, a volume on a claim, a schema migration since).
    #[arg(long)]
    pub strict: bool,
    /// Return once the request is sent, without printing the log.
    #[arg(long)]
    pub no_wait: bool,
    /// `json`: one object at the end with the request, the preflight warnings, the outcome and
    /// the log.
    #[arg(short = 'o', long, value_enum, default_value_t = super::args::Output::Text)]
    pub output: super::args::Output,
    /// Stop waiting after this long (the rollback goes on in the controller); the Rollout's
    /// progress deadline when unset.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

pub async fn run(a: RollbackArgs) -> anyhow::Result<()> {
    let (client, ns) = crate::ops::client_and_namespace(a.namespace.clone()).await?;
    let rollouts = Api::<Rollout>::namespaced(client.clone(), &ns);
    let (ro, releases) = crate::ops::rollout_and_releases(&client, &ns, &a.rollout).await?;
    let history = rows(&ro, &releases);
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
    let warnings = preflight(&client, &ns, &releases, &target.release).await;
    let json = a.output == super::args::Output::Json;
    for w in &warnings {
        if !json {
            println!("warning: {w}");
        }
    }
    if a.strict && !warnings.is_empty() {
        anyhow::bail!(
            "refused by --strict: the preflight found {} thing(s) the rollback cannot restore",
            warnings.len()
        );
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
            warnings: warnings.clone(),
        },
    )
    .await?;
    if !json {
        println!(
            "rollback of {ns}/{} to {} ({}) sent by {} (request {})",
            a.rollout,
            target.release,
            target.version.as_deref().unwrap_or(&target.digest),
            sent.by,
            sent.id
        );
    }
    let timeout = a.timeout.unwrap_or_else(|| {
        Duration::from_secs(crate::time::secs(&ro.spec.progress_deadline, 600).max(1) as u64)
    });
    let outcome = if a.no_wait {
        Ok(None)
    } else {
        watch(&rollouts, &a.rollout, &sent.id, timeout, !json).await
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
            "by": sent.by,
            "to": target.release,
            "warnings": warnings,
            "outcome": state,
            "error": outcome.as_ref().err().map(ToString::to_string),
            "log": record.as_ref().map(lines).unwrap_or_default(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    outcome.map(drop)
}

/// What the rollback to `target` cannot restore: the recorded ConfigMap hashes against
/// today's (read as the caller), Secrets, volumes on claims, and schema migrations of the
/// releases deployed after it.
async fn preflight(
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
    let created = t.metadata.creation_timestamp.as_ref().map(|c| c.0);
    let since: Vec<&Release> = releases
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(target))
        .filter(|r| r.metadata.creation_timestamp.as_ref().map(|c| c.0) > created)
        .collect();
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
