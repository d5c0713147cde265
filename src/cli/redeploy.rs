//! `rollguard redeploy`: an earlier Release's images on today's pod template. Prints what differs
//! between that Release's snapshot and today's template before it acts, says which one runs,
//! then follows the redeploy like a rollback.

use crate::api::release::Release;
use crate::history::{rollback_target, rows};
use crate::rollout::plan::{Request, RequestAction};

use super::rollback::{ManualArgs, lift_or_refuse, send_and_follow};

#[derive(Debug, clap::Args)]
pub struct RedeployArgs {
    pub rollout: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The Release whose images run: its name, version, or a digest prefix (7+ hex).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub m: ManualArgs,
}

pub async fn run(a: RedeployArgs) -> anyhow::Result<()> {
    let (client, ns) = crate::ops::client_and_namespace(a.namespace.clone()).await?;
    let (ro, releases) = crate::ops::rollout_and_releases(&client, &ns, &a.rollout).await?;
    let history = rows(&ro, &releases);
    let target = rollback_target(&history, Some(&a.to)).map_err(anyhow::Error::msg)?;
    let serving = ro
        .status
        .as_ref()
        .and_then(|s| s.stable.as_ref())
        .map(|s| s.release.clone())
        .ok_or_else(|| anyhow::anyhow!("{} has no stable release yet", a.rollout))?;
    let find = |name: &str| -> anyhow::Result<&Release> {
        releases
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| anyhow::anyhow!("the Release {name} is not in {ns}"))
    };
    let (then, today) = (find(&target.release)?, find(&serving)?);
    let label = target.version.as_deref().unwrap_or(&target.digest);
    let today_label = today.spec.version.as_deref().unwrap_or(&serving);
    let json = a.m.output == super::args::Output::Json;
    let diff = crate::redeploy::config_diff(&then.spec.pod_template, &today.spec.pod_template);
    let action = if diff.is_empty() {
        if !json {
            println!(
                "{} ({label}) was released with today's configuration (that of {serving}, \
                 {today_label}): a redeploy is the rollback to it, which runs instead",
                target.release
            );
        }
        RequestAction::Rollback
    } else {
        if !json {
            println!(
                "redeploy of {ns}/{}: the images of {} ({label}) on today's configuration, \
                 that of {serving} ({today_label})",
                a.rollout, target.release
            );
            println!("what differs between {label}'s snapshot and today's template:");
            for line in &diff {
                println!("  {line}");
            }
            println!(
                "chosen: today's configuration; `rollguard rollback {} --to {}` restores {label}'s \
                 own instead",
                a.rollout, target.release
            );
        }
        RequestAction::Redeploy
    };
    let verb = if action == RequestAction::Redeploy {
        "redeploy"
    } else {
        "roll back to"
    };
    lift_or_refuse(&client, &ns, target, a.m.override_reason.as_deref(), verb).await?;
    let warnings = if action == RequestAction::Redeploy {
        // Today's configuration runs, so nothing of it needs restoring; a migration made since
        // the images were current is not undone.
        let since = crate::preflight::released_after(&releases, then);
        let mut w = crate::preflight::migrations(label, &since);
        w.truncate(crate::rollout::plan::MAX_WARNINGS);
        w
    } else {
        super::rollback::preflight(&client, &ns, &releases, &target.release).await
    };
    for w in warnings.iter().filter(|_| !json) {
        println!("warning: {w}");
    }
    if a.m.strict && !warnings.is_empty() {
        anyhow::bail!(
            "refused by --strict: the preflight found {} warning(s)",
            warnings.len()
        );
    }
    let request = Request {
        id: String::new(),
        action,
        by: String::new(),
        reason: a.m.reason.clone(),
        to: Some(target.release.clone()),
        unstable: a.m.unstable.clone(),
        warnings,
    };
    send_and_follow(&client, &ns, &ro, request, label, &a.m, &diff).await
}
