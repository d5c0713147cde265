//! The live analysis of each canary: its templates bound to the arms, the Prometheus sources of
//! their providers, and the evidence each measurement leaves in the Rollout's status.

use std::collections::{BTreeMap, HashMap};

use std::sync::Arc;

use kube::{Api, Client};

use super::error::CannotStart;
use super::metrics::Metrics;
use crate::analysis::source::{MetricSource, Series, SourceError};

use crate::analysis::estimate::Outlook;
use crate::analysis::judge::{Cohort, Statistic};
use crate::analysis::latency::slowest;
use crate::analysis::prometheus::PrometheusSource;
use crate::analysis::provider::{allows, connect};
use crate::analysis::run::{AnalysisRun, Decision, Measurement, Target};
use crate::analysis::verdict::Verdict;
use crate::api::analysis::{AnalysisTemplate, ClusterAnalysisTemplate, InconclusiveAction};
use crate::api::common::bounded;
use crate::api::endpoints::MetricProvider;
use crate::api::rollout::{
    AnalysisSummary, BaselineMode, MetricEvidence, PassForecast, QueryValue, Rollout,
};
use crate::rollout::plan::AnalysisView;
use crate::rollout::workload::Arm;
use crate::rollout::workload::arm_name;
use crate::time::format_time;

/// What a run judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// The canary against the stable pods or the fresh baseline, both serving now.
    Canary,
    /// The promoted stable against itself `offset` seconds ago, before the rollout began.
    PromotedStable { offset: u64 },
}

/// How often `provider` can have new samples: its declared `scrapeInterval`, or the one its
/// Prometheus is configured with. None when neither is known; the metrics keep their interval.
async fn scrape_interval(
    provider: &str,
    source: &PrometheusSource,
    declared: Option<crate::api::common::Duration>,
) -> Option<std::time::Duration> {
    if let Some(d) = declared {
        match d.parse() {
            Ok(every) => return Some(every),
            // The CRD's pattern admits only durations; a value humantime still refuses is said
            // and the Prometheus configuration is read instead.
            Err(e) => tracing::warn!(
                provider,
                field = "spec.prometheus.scrapeInterval",
                value = %d.0,
                error = %e,
                "not a duration; reading the Prometheus configuration instead"
            ),
        }
    }
    match source.scrape_interval().await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::info!(provider, error = %e, "the scrape interval is unknown; metrics keep their interval");
            None
        }
    }
}

/// One canary's analysis, kept between reconciles.
pub struct LiveRun {
    /// What is judged: the canary's Release, or `verify/<release>` after a promotion.
    pub id: String,
    runs: Vec<(String, AnalysisRun)>,
    sources: HashMap<String, Timed>,
    metrics: Arc<Metrics>,
    /// Each metric's provider, for the evidence's graph links.
    provider_of: HashMap<String, String>,
    /// Providers that could not be used, with why; their metrics fail to query.
    broken: BTreeMap<String, String>,
    latest: BTreeMap<String, MetricEvidence>,
    first_fail_at: Option<i64>,
    /// Whether the counters were anchored at the canary's verified weight.
    anchored: bool,
}

impl LiveRun {
    /// Loads the Rollout's templates, binds them to the arms, and connects their providers.
    /// `id` names the run: a different canary, or a verification, starts a new one.
    pub async fn start(
        client: &Client,
        controller_namespace: &str,
        rollout: &Rollout,
        id: &str,
        judged: Judged,
        metrics: Arc<Metrics>,
    ) -> Result<LiveRun, CannotStart> {
        let namespace = rollout.metadata.namespace.clone().unwrap_or_default();
        let name = rollout.metadata.name.clone().unwrap_or_default();
        let Some(analysis) = &rollout.spec.analysis else {
            return Err(CannotStart::NoAnalysis);
        };
        let (canary, baseline, baseline_offset) = match judged {
            Judged::Canary => (
                arm_name(&name, Arm::Canary),
                match rollout.spec.baseline {
                    BaselineMode::Stable => arm_name(&name, Arm::Stable),
                    BaselineMode::Fresh => arm_name(&name, Arm::Baseline),
                },
                None,
            ),
            Judged::PromotedStable { offset } => (
                arm_name(&name, Arm::Stable),
                arm_name(&name, Arm::Stable),
                Some(offset),
            ),
        };
        let target = Target {
            namespace: namespace.clone(),
            canary,
            baseline,
            baseline_offset,
            args: analysis
                .args
                .iter()
                .map(|a| (a.name.clone(), a.value.clone()))
                .collect(),
        };
        let mut specs = Vec::new();
        let mut providers = Vec::new();
        let mut provider_of = HashMap::new();
        for t in &analysis.templates {
            let spec = if t.cluster_scope {
                Api::<ClusterAnalysisTemplate>::all(client.clone())
                    .get(&t.name)
                    .await
                    .map(|t| t.spec.template)
            } else {
                Api::<AnalysisTemplate>::namespaced(client.clone(), &namespace)
                    .get(&t.name)
                    .await
                    .map(|t| t.spec)
            }
            .map_err(|source| CannotStart::Template {
                name: t.name.clone(),
                source,
            })?;
            providers.extend(spec.metrics.iter().map(|m| m.provider.clone()));
            provider_of.extend(
                spec.metrics
                    .iter()
                    .map(|m| (m.name.clone(), m.provider.clone())),
            );
            specs.push((t.name.clone(), spec));
        }
        // Rendering parses every query: bounded in size and depth, and still CPU work a tenant
        // controls, so it runs off the async workers that renew the Lease and serve the others.
        let runs = tokio::task::spawn_blocking(move || {
            specs
                .into_iter()
                .map(|(name, spec)| {
                    AnalysisRun::new(&spec, &target)
                        .map(|run| (name.clone(), run))
                        .map_err(|source| CannotStart::Config { name, source })
                })
                .collect::<Result<Vec<_>, CannotStart>>()
        })
        .await
        .map_err(CannotStart::Rendering)??;
        let mut runs = runs;
        let mut sources = HashMap::new();
        let mut broken = BTreeMap::new();
        providers.sort();
        providers.dedup();
        for p in providers {
            let result = match Api::<MetricProvider>::all(client.clone()).get(&p).await {
                Err(e) => Err(format!("MetricProvider {p}: {e}")),
                Ok(mp) if !allows(&mp.spec, &namespace) => Err(format!(
                    "MetricProvider {p} does not allow namespace {namespace}"
                )),
                Ok(mp) => connect(client, controller_namespace, &mp)
                    .await
                    .map(|source| (source, mp.spec.prometheus.scrape_interval.clone()))
                    .map_err(|e| format!("MetricProvider {p}: {e}")),
            };
            match result {
                Ok((source, declared)) => {
                    if let Some(every) = scrape_interval(&p, &source, declared).await {
                        for (_, run) in &mut runs {
                            run.measure_every(&p, every.as_secs());
                        }
                    }
                    let timed = Timed {
                        provider: p.clone(),
                        source,
                        metrics: metrics.clone(),
                    };
                    sources.insert(p, timed);
                }
                Err(e) => {
                    broken.insert(p, e);
                }
            }
        }
        Ok(LiveRun {
            id: id.to_owned(),
            runs,
            sources,
            metrics,
            provider_of,
            broken,
            latest: BTreeMap::new(),
            first_fail_at: None,
            anchored: false,
        })
    }

    /// Anchors the counters of the metrics not yet measured at `at`, once per run: the moment
    /// the canary's first weight was verified, so the first measurement already counts.
    pub fn anchor_once(&mut self, at: i64) {
        if !std::mem::replace(&mut self.anchored, true) {
            for (_, run) in &mut self.runs {
                run.anchor_at(at);
            }
        }
    }

    /// Providers that could not be connected, for the Rollout's events.
    pub fn broken(&self) -> &BTreeMap<String, String> {
        &self.broken
    }

    /// Measures every due metric at `now` and returns the run's decision and evidence.
    pub async fn measure(&mut self, now: i64) -> AnalysisView {
        let sources = &self.sources;
        for (_, run) in &mut self.runs {
            let measurements = run.measure(|p| sources.get(p), now).await;
            for m in measurements {
                if m.outcome.verdict == Verdict::Fail && !m.dry_run && self.first_fail_at.is_none()
                {
                    self.first_fail_at = Some(m.at);
                }
                tracing::debug!(metric = %m.metric, verdict = %m.outcome.verdict, reason = %m.outcome.reason, "measured");
                if !m.dry_run {
                    self.metrics
                        .measurement(&m.metric, &m.outcome.verdict.to_string());
                }
                let mut ev = evidence(&m);
                ev.source = self
                    .provider_of
                    .get(&m.metric)
                    .and_then(|p| sources.get(p))
                    .map(|s| s.source.address().to_owned());
                self.latest.insert(m.metric.clone(), ev);
            }
        }
        let decision = combine(self.runs.iter().map(|(_, r)| r.decision()).collect());
        let reason = match &decision {
            Decision::Fail { reason, .. } | Decision::Inconclusive { reason, .. } => {
                Some(reason.clone())
            }
            _ => None,
        };
        let outlook = (decision == Decision::Running)
            .then(|| slowest(self.runs.iter().filter_map(|(_, r)| r.outlook())))
            .flatten();
        AnalysisView {
            summary: AnalysisSummary {
                decision: decision.name().to_owned(),
                reason,
                first_fail_at: self.first_fail_at.map(format_time),
                metrics: self.latest.values().cloned().collect(),
                forecast: outlook.as_ref().map(forecast),
            },
            decision,
            first_fail_at: self.first_fail_at,
            served_min_requests: self.runs.iter().all(|(_, r)| r.served_min_requests()),
            next_due_in: self
                .runs
                .iter()
                .filter_map(|(_, r)| r.next_due_in(now))
                .min(),
        }
    }
}

/// A provider's source that times each query and counts its failures.
struct Timed {
    provider: String,
    source: PrometheusSource,
    metrics: Arc<Metrics>,
}

impl MetricSource for Timed {
    async fn query(&self, promql: &str, at: i64) -> Result<Vec<Series>, SourceError> {
        let started = std::time::Instant::now();
        let answer = self.source.query(promql, at).await;
        self.metrics.query(
            &self.provider,
            started.elapsed().as_secs_f64(),
            answer.is_ok(),
        );
        answer
    }
}

/// The decisions of several templates as one: a critical Fail, then any Fail, then a rollback
/// on Inconclusive, then a pause, then Running; Pass only when all pass.
pub fn combine(decisions: Vec<Decision>) -> Decision {
    let rank = |d: &Decision| match d {
        Decision::Fail { critical: true, .. } => 0,
        Decision::Fail { .. } => 1,
        Decision::Inconclusive {
            action: InconclusiveAction::Rollback,
            ..
        } => 2,
        Decision::Inconclusive { .. } => 3,
        Decision::Running => 4,
        Decision::Pass => 5,
    };
    decisions
        .into_iter()
        .min_by_key(rank)
        .unwrap_or(Decision::Pass)
}

/// A forecast as the status keeps it.
pub fn forecast(o: &Outlook) -> PassForecast {
    let e = o.estimate();
    PassForecast {
        seconds: e.map(|e| e.secs.ceil() as i64),
        p90_seconds: e.map(|e| e.p90_secs.ceil() as i64),
        message: bounded(&o.sentence()),
    }
}

/// A measurement as the status and the Release keep it.
pub fn evidence(m: &Measurement) -> MetricEvidence {
    let o = &m.outcome;
    let counts = match (&o.canary, &o.baseline) {
        (Some(c), Some(b)) => Some(format!(
            "canary {}/{}, baseline {}/{}",
            c.events, c.requests, b.events, b.requests
        )),
        _ => None,
    };
    MetricEvidence {
        metric: m.metric.clone(),
        verdict: if o.verdict == Verdict::Inconclusive && o.problem.is_none() {
            "Collecting".to_owned()
        } else {
            o.verdict.to_string()
        },
        reason: bounded(&o.reason),
        at: format_time(m.at),
        counts,
        worse_since: o.worse_since.map(format_time),
        source: None,
        statistic: o.statistic.as_ref().map(Statistic::text),
        queries: m
            .queries
            .iter()
            .map(|q| QueryValue {
                name: format!(
                    "{} {}",
                    match q.arm {
                        Cohort::Canary => "canary",
                        Cohort::Baseline => "baseline",
                    },
                    q.role
                ),
                promql: q.promql.clone(),
                value: q.value,
                error: q.error.as_deref().map(bounded),
            })
            .collect(),
        critical: m.critical,
        dry_run: m.dry_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(critical: bool) -> Decision {
        Decision::Fail {
            metric: "m".into(),
            reason: "r".into(),
            critical,
        }
    }

    #[test]
    fn a_statistic_at_the_floor_of_its_scale_reads_in_words_not_300_digits() {
        let text = (Statistic {
            name: "ln e, canary worse".into(),
            value: -1e300,
            threshold: 4.892,
        })
        .text();
        assert_eq!(
            text,
            "ln e, canary worse = −∞ against 4.892 (the canary is not worse by enough to matter)"
        );
        assert!(text.len() < 120, "{text}");
        let big = Statistic {
            name: "canary value".into(),
            value: 12_345_678.0,
            threshold: 2.5,
        }
        .text();
        assert_eq!(big, "canary value = 1.235e7 against 2.500");
    }

    #[test]
    fn the_worst_decision_wins() {
        assert_eq!(
            combine(vec![Decision::Pass, Decision::Pass]),
            Decision::Pass
        );
        assert_eq!(
            combine(vec![Decision::Pass, Decision::Running]),
            Decision::Running
        );
        assert_eq!(
            combine(vec![fail(false), Decision::Running, fail(true)]),
            fail(true)
        );
        let pause = Decision::Inconclusive {
            metric: "m".into(),
            reason: "r".into(),
            action: InconclusiveAction::Pause,
        };
        assert_eq!(combine(vec![Decision::Pass, pause.clone()]), pause);
        assert_eq!(combine(vec![pause, fail(false)]), fail(false));
        assert_eq!(combine(Vec::new()), Decision::Pass);
    }
}
