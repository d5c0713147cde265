//! `rollguard lint --rps N`: Rollout steps that last far less than their analysis needs.
//!
//! A step that waits for its Pass (`promotion: requirePass`) lasts as long as the evidence
//! takes, whatever its `duration` says. At the traffic given, for a canary as good as its
//! baseline at the error rate given, the forecast of [`crate::analysis::estimate`] says how long
//! that is; a step whose duration is far below it is warned about, with the two ways out.

use std::collections::BTreeMap;

use serde_json::Value;

use super::finding::{Raw, error, warning};
use crate::analysis::estimate::{human_duration, human_rps, outlook_at};
use crate::analysis::share::ShareConfig;
use crate::api::analysis::{AnalysisTemplateSpec, ErrorRate};
use crate::api::rollout::{Promotion, RolloutSpec};
use crate::templates::API_VERSION;
use crate::time::secs;

/// The traffic a service sees, as `--rps` and `--error-rate` give it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    /// Requests per second of the whole service, canary and stable together.
    pub rps: f64,
    /// The stable's error rate, a fraction.
    pub error_rate: f64,
}

/// Whether a document is a rollguard Rollout.
pub fn is_rollout(doc: &Value) -> bool {
    doc["kind"].as_str() == Some("Rollout") && doc["apiVersion"].as_str() == Some(API_VERSION)
}

/// The `errorRate` judgments of the templates among the documents, by template name.
pub fn error_rates(docs: &[Value]) -> BTreeMap<String, Vec<ShareConfig>> {
    docs.iter()
        .filter(|d| crate::templates::is_template(d))
        .filter_map(|d| {
            let name = d["metadata"]["name"].as_str()?.to_owned();
            let spec: AnalysisTemplateSpec = serde_json::from_value(d["spec"].clone()).ok()?;
            let configs = spec
                .metrics
                .iter()
                .filter(|m| !m.dry_run)
                .filter_map(|m| m.error_rate.as_ref().map(ShareConfig::from))
                .collect();
            Some((name, configs))
        })
        .collect()
}

/// The findings of one Rollout document: a spec that does not decode, and with `traffic`,
/// the steps far shorter than the Pass they wait for.
pub fn lint_rollout(
    doc: &Value,
    templates: &BTreeMap<String, Vec<ShareConfig>>,
    traffic: Option<Traffic>,
) -> Vec<Raw> {
    let spec: RolloutSpec = match serde_path_to_error::deserialize(&doc["spec"]) {
        Ok(s) => s,
        Err(e) => return vec![error(format!("spec.{}", e.path()), e.inner().to_string())],
    };
    let (Some(traffic), Some(analysis)) = (traffic, &spec.analysis) else {
        return Vec::new();
    };
    // The slowest errorRate of the templates the Rollout names; the defaults when none of them
    // is among the files.
    let named: Vec<&ShareConfig> = analysis
        .templates
        .iter()
        .filter_map(|t| templates.get(&t.name))
        .flatten()
        .collect();
    let assumed = named.is_empty();
    let defaults = default_error_rate();
    let configs = if assumed { vec![&defaults] } else { named };
    let mut out = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let (Some(weight), Some(duration)) = (step.set_weight, &step.duration) else {
            continue;
        };
        let policy = step.promotion.unwrap_or(spec.promotion);
        let d = secs(duration, 0);
        if weight <= 0 || weight >= 100 || policy != Promotion::RequirePass {
            continue;
        }
        let canary = traffic.rps * f64::from(weight) / 100.0;
        let baseline = traffic.rps - canary;
        let slowest = configs
            .iter()
            .filter_map(|c| outlook_at(c, canary, baseline, traffic.error_rate).map(|o| (c, o)))
            .max_by(|a, b| {
                let secs = |o: &crate::analysis::estimate::Outlook| {
                    o.estimate().map_or(f64::INFINITY, |e| e.secs)
                };
                secs(&a.1).total_cmp(&secs(&b.1))
            });
        let Some((config, outlook)) = slowest else {
            continue;
        };
        let needs = outlook.estimate().map(|e| (e.secs, e.p90_secs));
        let far = needs.is_none_or(|(s, _)| s > 2.0 * d as f64 && s > d as f64 + 60.0);
        if !far {
            continue;
        }
        let time = needs.map_or("more than a week".to_owned(), |(s, p90)| {
            format!(
                "about {} (9 in 10 within {})",
                human_duration(s),
                human_duration(p90)
            )
        });
        out.push(warning(
            format!("spec.steps[{i}].duration"),
            format!(
                "at {} rps the canary gets {} rps ({weight}%); showing it within {}× of a {:.2}% \
                 baseline needs {time}, far beyond this step's {d}s{}. The step waits for its \
                 Pass (promotion requirePass): lengthen it, or set promotion: noFail to leave it \
                 after {d}s when no metric fails",
                human_rps(traffic.rps),
                human_rps(canary),
                config.tolerated_ratio,
                traffic.error_rate * 100.0,
                if assumed {
                    " (errorRate defaults: the Rollout's templates are not among the files)"
                } else {
                    ""
                }
            ),
        ));
    }
    out
}

fn default_error_rate() -> ShareConfig {
    let e: ErrorRate = serde_json::from_value(serde_json::json!({"requests": "r", "errors": "e"}))
        .expect("errorRate with its defaults");
    ShareConfig::from(&e)
}

/// `--error-rate`: `0.5%` or `0.005`.
pub fn parse_error_rate(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.trim().strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (text.trim(), 1.0),
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a rate: write 0.5% or 0.005"))?;
    let v = v / scale;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("{text:?} is not a rate between 0 and 100%"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(steps: Value, promotion: Option<&str>) -> Value {
        let mut spec = serde_json::json!({
            "targetRef": {"name": "web"},
            "steps": steps,
            "analysis": {"templates": [{"name": "http"}]},
        });
        if let Some(p) = promotion {
            spec["promotion"] = p.into();
        }
        serde_json::json!({"apiVersion": API_VERSION, "kind": "Rollout",
            "metadata": {"name": "web"}, "spec": spec})
    }

    fn template(tolerated: f64) -> Value {
        serde_json::json!({"apiVersion": API_VERSION, "kind": "AnalysisTemplate",
            "metadata": {"name": "http"}, "spec": {"metrics": [{"name": "errors", "provider": "p",
            "errorRate": {"requests": "r{a=\"{{arm}}\"}", "errors": "e{a=\"{{arm}}\"}",
            "toleratedRatio": tolerated}}]}})
    }

    const LOW: Traffic = Traffic {
        rps: 100.0,
        error_rate: 0.005,
    };

    #[test]
    fn a_minute_at_ten_percent_of_100_rps_is_far_too_short_to_pass() {
        let steps = serde_json::json!([{"setWeight": 10, "duration": "60s"}, {"setWeight": 50}]);
        let templates = error_rates(&[template(1.5)]);
        let found = lint_rollout(&rollout(steps, None), &templates, Some(LOW));
        assert_eq!(found.len(), 1, "{found:#?}");
        let (path, _, message) = &found[0];
        assert_eq!(path, "spec.steps[0].duration");
        for words in [
            "the canary gets 10 rps (10%)",
            "within 1.5× of a 0.50% baseline needs about ",
            "far beyond this step's 60s",
            "promotion: noFail",
        ] {
            assert!(message.contains(words), "{words:?} in {message}");
        }
    }

    #[test]
    fn no_warning_without_traffic_under_no_fail_or_for_a_step_long_enough() {
        let short = serde_json::json!([{"setWeight": 10, "duration": "60s"}]);
        let templates = error_rates(&[template(1.5)]);
        assert!(lint_rollout(&rollout(short.clone(), None), &templates, None).is_empty());
        assert!(
            lint_rollout(
                &rollout(short.clone(), Some("noFail")),
                &templates,
                Some(LOW)
            )
            .is_empty()
        );
        let long = serde_json::json!([{"setWeight": 10, "duration": "2h"}]);
        assert!(lint_rollout(&rollout(long, None), &templates, Some(LOW)).is_empty());
        let busy = Traffic {
            rps: 10_000.0,
            error_rate: 0.005,
        };
        assert!(lint_rollout(&rollout(short, None), &templates, Some(busy)).is_empty());
    }

    #[test]
    fn templates_not_among_the_files_are_assumed_at_their_defaults_and_said_so() {
        let steps = serde_json::json!([{"setWeight": 10, "duration": "60s"}]);
        let found = lint_rollout(&rollout(steps, None), &BTreeMap::new(), Some(LOW));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].2.contains("errorRate defaults"), "{}", found[0].2);
    }

    #[test]
    fn a_rollout_that_does_not_decode_names_the_field() {
        let mut doc = rollout(serde_json::json!([{"setWeight": "ten"}]), None);
        doc["spec"]["steps"][0]["setWeight"] = "ten".into();
        let found = lint_rollout(&doc, &BTreeMap::new(), Some(LOW));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].0.starts_with("spec.steps[0].setWeight"),
            "{found:?}"
        );
    }

    #[test]
    fn error_rates_read_as_percent_or_fraction() {
        assert_eq!(parse_error_rate("0.5%"), Ok(0.005));
        assert_eq!(parse_error_rate("0.005"), Ok(0.005));
        assert!(parse_error_rate("half").is_err());
        assert!(parse_error_rate("150%").is_err());
    }
}
