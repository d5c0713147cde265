//! The soundness of one query: it parses once filled, and its shape suits its judgment
//! (counters under `rate()` for thresholds, raw counters for errorRate and latency, `le` kept
//! for latency buckets, `{{arm}}` used).

use promql_parser::parser::{Expr, LabelModifier};

use super::finding::{Raw, error, warning};
use crate::analysis::judge::Role;
use crate::analysis::render::placeholders;
use crate::api::analysis::{BucketUnit, Metric};

/// What a parsed query does with its series: what lint judges its soundness by.
#[derive(Debug, Default, PartialEq)]
struct Facts {
    /// Counter-like selectors (`_total`, `_count`, `_sum`, `_bucket`) read raw.
    raw_counters: Vec<String>,
    /// Aggregations over bucket series that drop `le`.
    drops_le: bool,
    /// Some `rate()`, `increase()` or the like, on any series.
    uses_rate: bool,
    selectors: Vec<String>,
}

const RATE_FUNCTIONS: [&str; 8] = [
    "rate", "irate", "increase", "delta", "idelta", "deriv", "resets", "changes",
];

fn is_counter_name(name: &str) -> bool {
    ["_total", "_count", "_sum", "_bucket"]
        .iter()
        .any(|s| name.ends_with(s))
}

fn facts(expr: &Expr) -> Facts {
    fn walk(e: &Expr, rated: bool, f: &mut Facts) -> bool {
        // Returns whether the subtree reads bucket series.
        match e {
            Expr::Aggregate(a) => {
                let buckets = walk(&a.expr, rated, f);
                if let Some(p) = &a.param {
                    walk(p, rated, f);
                }
                let keeps_le = match &a.modifier {
                    Some(LabelModifier::Include(l)) => l.labels.iter().any(|x| x == "le"),
                    Some(LabelModifier::Exclude(l)) => !l.labels.iter().any(|x| x == "le"),
                    None => false,
                };
                if buckets && !keeps_le {
                    f.drops_le = true;
                }
                buckets
            }
            Expr::Unary(u) => walk(&u.expr, rated, f),
            Expr::Binary(b) => {
                let l = walk(&b.lhs, rated, f);
                let r = walk(&b.rhs, rated, f);
                l || r
            }
            Expr::Paren(p) => walk(&p.expr, rated, f),
            Expr::Subquery(s) => walk(&s.expr, rated, f),
            Expr::VectorSelector(vs) => selector(vs.name.as_deref(), rated, f),
            Expr::MatrixSelector(ms) => selector(ms.vs.name.as_deref(), rated, f),
            Expr::Call(c) => {
                let is_rate = RATE_FUNCTIONS.contains(&c.func.name);
                f.uses_rate |= is_rate;
                let rated = rated || is_rate;
                let mut buckets = false;
                for a in &c.args.args {
                    buckets |= walk(a, rated, f);
                }
                // histogram_quantile consumes `le`: its result is not a bucket series.
                buckets && c.func.name != "histogram_quantile"
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => false,
        }
    }
    fn selector(name: Option<&str>, rated: bool, f: &mut Facts) -> bool {
        let Some(name) = name else { return false };
        f.selectors.push(name.to_owned());
        if is_counter_name(name) && !rated {
            f.raw_counters.push(name.to_owned());
        }
        name.ends_with("_bucket")
    }
    let mut f = Facts::default();
    walk(expr, false, &mut f);
    f
}

pub(super) fn lint_query(
    metric: &Metric,
    role: Role,
    template: &str,
    probe: &str,
    path: &str,
    out: &mut Vec<Raw>,
) {
    let Ok(expr) = promql_parser::parser::parse(probe) else {
        return;
    };
    let f = facts(&expr);
    let uses_arm = placeholders(template).iter().any(|p| p == "arm");
    match role {
        Role::Value => {
            if let Some(name) = f.raw_counters.first() {
                out.push(error(
                    path,
                    format!("{name} is a counter read without rate() or increase(): it only grows, so the comparison drifts with the pods' age"),
                ));
            }
            if !uses_arm {
                let msg = "the query does not use {{arm}}: it measures the same thing for canary and baseline";
                if metric.relative.is_some() {
                    out.push(error(path, msg));
                } else {
                    out.push(warning(path, msg));
                }
            }
        }
        Role::Requests | Role::Errors | Role::Buckets => {
            if f.uses_rate {
                out.push(error(
                    path,
                    "query the raw counter (e.g. sum(…_total{…})), not rate() or increase(): rollguard takes the increments itself, and overlapping windows would count requests again",
                ));
            }
            if !uses_arm {
                out.push(error(
                    path,
                    "the query does not use {{arm}}: canary and baseline would get the same answer",
                ));
            }
        }
    }
    if role == Role::Buckets {
        if !f.selectors.iter().any(|s| s.ends_with("_bucket")) {
            out.push(error(path, "latency needs a histogram's _bucket series"));
        }
        if f.drops_le {
            out.push(error(
                path,
                "an aggregation drops `le`: keep it, e.g. sum by (le) (…_bucket{…})",
            ));
        }
        if let Some(l) = &metric.latency {
            let ms_name = f
                .selectors
                .iter()
                .any(|s| s.contains("millisecond") || s.contains("_ms_"));
            let s_name = f.selectors.iter().any(|s| s.contains("_seconds_"));
            let unit_path = path.replace("latency.buckets", "latency.bucketUnit");
            if ms_name && l.bucket_unit == BucketUnit::Seconds {
                out.push(error(
                    unit_path,
                    "the histogram is in milliseconds: set bucketUnit: milliseconds",
                ));
            } else if s_name && l.bucket_unit == BucketUnit::Milliseconds {
                out.push(error(
                    unit_path,
                    "the histogram is in seconds: set bucketUnit: seconds",
                ));
            }
        }
    }
}
