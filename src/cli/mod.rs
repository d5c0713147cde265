//! The command line shared by the `rollguard` binary and its `kubectl rollguard` plugin form.

mod args;
mod backtest;
mod redeploy;
mod rollback;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::lint::Level;
use crate::rollout::plan::RequestAction;
pub use args::{Format, Output};
pub use backtest::BacktestArgs;
pub use redeploy::RedeployArgs;
pub use rollback::RollbackArgs;

#[derive(Debug, Parser)]
#[command(name = "rollguard", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version of this build.
    Version,
    /// GET an http(s) URL and exit 0 on a 2xx answer, 1 otherwise: the chart's `helm test`
    /// checks the controller's /healthz with it, from the controller's own image.
    Probe {
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s")]
        timeout: humantime::Duration,
    },
    /// Print a shell completion script: `source <(rollguard completion bash)`, or write it
    /// where your shell loads completions from.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print every rollguard CRD as YAML, or write one file per CRD into directories.
    Crds {
        /// Write `<crd name>.yaml` files here instead of printing a multi-document stream.
        /// Repeat to fill several directories (the repository keeps `crds/` and the chart's copy).
        #[arg(long)]
        dir: Vec<PathBuf>,
    },
    /// Check analysis templates offline: schema, arguments, PromQL, and sound judgments.
    /// Exits 1 when there is an error.
    Lint {
        /// YAML files: AnalysisTemplates, ClusterAnalysisTemplates and Rollouts; other documents
        /// are skipped.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// The service's requests per second (canary and stable together): warn about Rollout
        /// steps far shorter than the time their analysis needs to pass at that traffic.
        #[arg(long)]
        rps: Option<f64>,
        /// The stable's error rate for --rps, as 0.5% or 0.005.
        #[arg(long, default_value = "0.5%", value_parser = crate::lint::parse_error_rate)]
        error_rate: f64,
    },
    /// Replay a template over a past time range against Prometheus, as the controller would,
    /// and print the verdicts and the first Fail with its evidence.
    Backtest(Box<BacktestArgs>),
    /// Run the controller: reconcile Rollouts, judge canaries, promote or roll back.
    Controller(ControllerArgs),
    /// Show a Rollout: phase, step, weights, both digests, the latest verdicts and the timeline.
    Status {
        rollout: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Keep watching and print each change.
        #[arg(short, long)]
        watch: bool,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// List a Rollout's releases, newest first: version, digest, commit, when and by whom, what
    /// each is now (Canary, Current, Previous, Unstable, Superseded) and whether it can be
    /// rolled back to.
    History {
        rollout: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Show at most this many releases (the newest).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Roll back by hand to a release in the history (the previous one by default): its whole
    /// pod template through a rolling update, traffic on it, a running canary withdrawn first.
    /// Prints the rollback's log as it happens; exits non-zero if it is refused or fails.
    Rollback(Box<RollbackArgs>),
    /// Run an earlier release's images on today's pod template (env, resources, probes, ports):
    /// prints what differs from that release's snapshot first, then goes like a rollback, as a
    /// new release.
    Redeploy(Box<RedeployArgs>),
    /// Skip the remaining steps and promote the canary.
    Promote(RequestArgs),
    /// Roll the canary back now (or the last promotion, within its post-promotion window); the
    /// Release is marked Unstable.
    Abort(RequestArgs),
    /// Hold the canary at its current step; the analysis keeps judging.
    Pause(RequestArgs),
    /// Continue after a pause.
    Resume(RequestArgs),
    /// Print a rollback's incident as Markdown for the post-mortem: what changed, the evidence,
    /// the timeline and the actions taken. `rollguard incident resolve` closes it.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Incident {
        #[command(subcommand)]
        action: Option<IncidentAction>,
        #[arg(required = true)]
        rollout: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        /// The Release rolled back: its name, digest or a digest prefix (7+ hex). The latest
        /// rollback when unset.
        #[arg(long)]
        release: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Lift a Release's Unstable verdict so that its digest may be canaried again.
    Override {
        /// The Release (`<rollout>-<10 hex>`), as `rollguard status` shows it.
        release: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Why the verdict no longer holds; recorded in the Release.
        #[arg(long, required = true)]
        reason: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum IncidentAction {
    /// Close the open incident of the Rollout's last rollback, once its root cause is
    /// understood. Recovery does not close it; a later promotion of the Rollout does.
    Resolve {
        rollout: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// What was found; recorded in the Release's history and sent with the resolution.
        #[arg(long, required = true)]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    pub rollout: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Recorded in the Release's history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Return once the request is sent, without waiting for the controller to accept or
    /// refuse it.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080", env = "ROLLGUARD_LISTEN")]
    listen: std::net::SocketAddr,
    /// The controller's namespace, where provider and receiver Secrets live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "rollguard-system")]
    namespace: String,
    /// Rollouts reconciled at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Prometheus base URL for the graph links in escalations, when the MetricProviders'
    /// addresses are in-cluster names people cannot open.
    #[arg(long, env = "ROLLGUARD_GRAPH_URL")]
    graph_url: Option<String>,
    /// The leader Lease, in the controller's namespace. Replicas with the same Lease elect one
    /// leader; the others keep their caches warm and write nothing.
    #[arg(long, default_value = "rollguard-leader", env = "ROLLGUARD_LEASE_NAME")]
    lease_name: String,
    /// How long a leader's claim holds without renewal: a standby takes over this long after
    /// the leader's last renewal (whole seconds).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: std::time::Duration,
    /// The leader renews this long after its last renewal. It stops writing halfway between
    /// this and the lease duration if the renewal did not land.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: std::time::Duration,
    /// A canary started this soon after a rollback of the same Rollout counts as rework
    /// (`rollguard_rework_deployments_total`).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    rework_window: std::time::Duration,
    /// `json` for one JSON object per line, `text` for people.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses the arguments and runs the command; `main` of both binaries.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("rollguard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Crds { dir } => print_crds(dir),
        Command::Probe { url, timeout } => {
            let status = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(probe(&url, *timeout))?;
            println!("{url}: {status}");
            if !status.is_success() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Completion { shell } => {
            print!("{}", completion(shell, "rollguard"));
            Ok(())
        }
        Command::Lint {
            files,
            output,
            rps,
            error_rate,
        } => {
            let traffic = match rps {
                Some(rps) if !(rps > 0.0 && rps.is_finite()) => {
                    anyhow::bail!("--rps {rps}: give the service's requests per second, above 0")
                }
                Some(rps) => Some(crate::lint::Traffic { rps, error_rate }),
                None => None,
            };
            if !lint(&files, output, traffic)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Backtest(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(backtest::backtest(*args)),
        Command::Controller(args) => {
            let log = init_logs(args.log_format);
            runtime(true)?.block_on(crate::controller::run(
                crate::controller::Settings {
                    listen: args.listen,
                    namespace: args.namespace,
                    concurrency: args.concurrency,
                    graph_url: args.graph_url,
                    lease_name: args.lease_name,
                    lease_duration: args.lease_duration,
                    renew_deadline: args.renew_deadline,
                    rework_window: args.rework_window,
                },
                log,
            ))
        }
        Command::Status {
            rollout,
            namespace,
            watch,
            output,
        } => runtime(false)?.block_on(async {
            let (client, ns) = crate::ops::client_and_namespace(namespace).await?;
            crate::ops::status(&client, &ns, &rollout, watch, output == Output::Json).await
        }),
        Command::Incident {
            action:
                Some(IncidentAction::Resolve {
                    rollout,
                    namespace,
                    reason,
                }),
            ..
        } => send(
            RequestArgs {
                rollout,
                namespace,
                reason: Some(reason),
                no_wait: false,
            },
            RequestAction::Resolve,
        ),
        Command::Incident {
            action: None,
            rollout,
            namespace,
            release,
            output,
        } => runtime(false)?.block_on(async {
            let rollout = rollout.context("name the Rollout")?;
            let (client, ns) = crate::ops::client_and_namespace(namespace).await?;
            let incident = crate::ops::incident(&client, &ns, &rollout, release.as_deref()).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&incident)?),
                Output::Text => print!("{}", incident.markdown()),
            }
            Ok(())
        }),
        Command::History {
            rollout,
            namespace,
            limit,
            output,
        } => runtime(false)?.block_on(async {
            let (client, ns) = crate::ops::client_and_namespace(namespace).await?;
            let mut rows = crate::ops::history(&client, &ns, &rollout).await?;
            rows.truncate(limit.map_or(usize::MAX, |l| l as usize));
            match output {
                Format::Text if rows.is_empty() => {
                    println!("Rollout {ns}/{rollout} has no releases yet")
                }
                Format::Text => print!("{}", crate::history::table(&rows)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Yaml => print!("{}", serde_saphyr::to_string(&rows)?),
            }
            Ok(())
        }),
        Command::Rollback(a) => runtime(false)?.block_on(rollback::run(*a)),
        Command::Redeploy(a) => runtime(false)?.block_on(redeploy::run(*a)),
        Command::Promote(a) => send(a, RequestAction::Promote),
        Command::Abort(a) => send(a, RequestAction::Abort),
        Command::Pause(a) => send(a, RequestAction::Pause),
        Command::Resume(a) => send(a, RequestAction::Resume),
        Command::Override {
            release,
            namespace,
            reason,
        } => runtime(false)?.block_on(async {
            let (client, ns) = crate::ops::client_and_namespace(namespace).await?;
            let by = crate::ops::override_release(&client, &ns, &release, &reason).await?;
            println!("Release {ns}/{release}: Unstable verdict lifted by {by}: {reason}");
            Ok(())
        }),
    }
}

/// The completion script of `shell` for the command as `name` (`rollguard`, or
/// `kubectl-rollguard` for the plugin form).
pub fn completion(shell: clap_complete::Shell, name: &str) -> String {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), name, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn runtime(threads: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if threads {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().context("starting the runtime")
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info,kube=warn`); the filter can be
/// replaced while the controller runs (`PUT /log-level`).
fn init_logs(format: LogFormat) -> crate::controller::http::LogLevel {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    const DEFAULT: &str = "info,kube=warn";
    let (directives, filter) = match std::env::var("RUST_LOG") {
        Ok(d) if !d.trim().is_empty() => match tracing_subscriber::EnvFilter::builder().parse(&d) {
            Ok(f) => (d, f),
            Err(e) => {
                eprintln!("RUST_LOG={d:?} is not a valid filter ({e}); using {DEFAULT:?}");
                (
                    DEFAULT.to_owned(),
                    tracing_subscriber::EnvFilter::new(DEFAULT),
                )
            }
        },
        _ => (
            DEFAULT.to_owned(),
            tracing_subscriber::EnvFilter::new(DEFAULT),
        ),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    crate::controller::http::LogLevel::new(handle, &directives)
}

/// How long a request waits for the controller's answer.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn send(a: RequestArgs, action: RequestAction) -> anyhow::Result<()> {
    runtime(false)?.block_on(async {
        let (client, ns) = crate::ops::client_and_namespace(a.namespace).await?;
        let r = crate::ops::request(&client, &ns, &a.rollout, action, a.reason).await?;
        println!(
            "{action} of Rollout {ns}/{} sent by {} (request {})",
            a.rollout, r.by, r.id
        );
        if a.no_wait {
            return Ok(());
        }
        let o = crate::ops::outcome(&client, &ns, &a.rollout, &r.id, REQUEST_WAIT).await?;
        if o.accepted {
            println!("accepted: {}", o.message);
            Ok(())
        } else {
            anyhow::bail!("refused: {}", o.message)
        }
    })
}

/// Prints the findings; returns whether there were no errors.
fn lint(
    files: &[PathBuf],
    output: Output,
    traffic: Option<crate::lint::Traffic>,
) -> anyhow::Result<bool> {
    let reports = crate::lint::lint_files(files, traffic);
    let count = |s: Level| {
        reports
            .iter()
            .flat_map(|r| &r.findings)
            .filter(|f| f.severity == s)
            .count()
    };
    let (errors, warnings) = (count(Level::Error), count(Level::Warning));
    let templates: usize = reports.iter().map(|r| r.templates).sum();
    let rollouts: usize = reports.iter().map(|r| r.rollouts).sum();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "files": reports,
                "templates": templates,
                "rollouts": rollouts,
                "errors": errors,
                "warnings": warnings,
            }))?
        ),
        Output::Text => {
            for f in reports.iter().flat_map(|r| &r.findings) {
                println!("{f}");
            }
            let rollouts = if rollouts > 0 {
                format!(", {rollouts} Rollout(s)")
            } else {
                String::new()
            };
            eprintln!(
                "{} file(s), {templates} template(s){rollouts}: {errors} error(s), {warnings} warning(s)",
                files.len()
            );
        }
    }
    Ok(errors == 0)
}

/// The status of a GET of `url`.
async fn probe(url: &str, timeout: std::time::Duration) -> anyhow::Result<reqwest::StatusCode> {
    anyhow::ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "{url}: give an http:// or https:// URL"
    );
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let answer = client.get(url).send().await.with_context(|| {
        format!(
            "{url}: no answer within {}",
            humantime::format_duration(timeout)
        )
    })?;
    Ok(answer.status())
}

fn print_crds(dirs: Vec<PathBuf>) -> anyhow::Result<()> {
    let crds = crate::api::crds();
    if dirs.is_empty() {
        for crd in &crds {
            print!("---\n{}", crate::api::crd_yaml(crd)?);
        }
    }
    for dir in &dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for crd in &crds {
            let path = dir.join(crate::api::crd_file_name(crd));
            std::fs::write(&path, crate::api::crd_yaml(crd)?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn backtest_needs_arms_and_parses_arguments() {
        let base = [
            "rollguard",
            "backtest",
            "--prometheus",
            "http://127.0.0.1:9090",
            "--template",
            "t.yaml",
            "--from",
            "now-1h",
        ];
        let err = Cli::try_parse_from(base).expect_err("no arms");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let mut with = base.to_vec();
        with.extend([
            "--rollout",
            "checkout",
            "--arg",
            "route=/pay",
            "--step",
            "5s",
        ]);
        let a = backtest_args(&with);
        assert_eq!(a.args, vec![("route".to_owned(), "/pay".to_owned())]);
        assert_eq!(a.step, std::time::Duration::from_secs(5));
        let mut bad = base.to_vec();
        bad.extend(["--rollout", "x", "--arg", "novalue"]);
        assert!(Cli::try_parse_from(bad).is_err());
        // --release stands for the window and the Rollout; it does not mix with --from.
        let release = [
            "rollguard",
            "backtest",
            "--prometheus",
            "http://127.0.0.1:9090",
            "--template",
            "t.yaml",
            "--release",
            "web-cccccccccc",
        ];
        assert_eq!(
            backtest_args(&release).release.as_deref(),
            Some("web-cccccccccc")
        );
        let mut both = release.to_vec();
        both.extend(["--from", "now-1h"]);
        assert_eq!(
            Cli::try_parse_from(both).expect_err("both").kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
        let no_window = &release[..6];
        assert_eq!(
            Cli::try_parse_from(no_window)
                .expect_err("no window")
                .kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    fn backtest_args(argv: &[&str]) -> backtest::BacktestArgs {
        match Cli::try_parse_from(argv).expect("valid").command {
            Command::Backtest(a) => *a,
            other => panic!("not a backtest: {other:?}"),
        }
    }

    #[test]
    fn a_releases_window_runs_from_its_creation_to_a_minute_past_its_verdict() {
        assert_eq!(
            backtest::release_window(1000, Some(1300), 5000),
            (1000, 1360)
        );
        assert_eq!(backtest::release_window(1000, None, 5000), (1000, 5000));
        assert_eq!(
            backtest::release_window(1000, Some(4990), 5000),
            (1000, 5000)
        );
    }

    #[test]
    fn lint_needs_a_file() {
        let err = Cli::try_parse_from(["rollguard", "lint"]).expect_err("no files");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn redeploy_needs_the_release_whose_images_run() {
        let err = Cli::try_parse_from(["rollguard", "redeploy", "web"]).expect_err("no --to");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--to"), "{err}");
        let cli =
            Cli::try_parse_from(["rollguard", "redeploy", "web", "--to", "1.5.0", "--strict"])
                .expect("parses");
        assert!(matches!(cli.command, Command::Redeploy(a) if a.to == "1.5.0" && a.m.strict));
    }

    #[test]
    fn completions_cover_every_command_in_each_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = completion(shell, "rollguard");
            for word in [
                "rollguard",
                "rollback",
                "redeploy",
                "history",
                "override-reason",
                "status",
            ] {
                assert!(script.contains(word), "{shell:?} lacks {word}");
            }
        }
        let cli = Cli::try_parse_from(["rollguard", "completion", "zsh"]).expect("parses");
        assert!(matches!(cli.command, Command::Completion { .. }));
        assert!(Cli::try_parse_from(["rollguard", "completion", "tcsh"]).is_err());
    }

    #[test]
    fn unknown_subcommand_is_an_error() {
        let err = Cli::try_parse_from(["rollguard", "frobnicate"]).expect_err("unknown command");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }
}
