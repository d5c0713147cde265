//! Which backends of a route are the arms, what weights they carry, and the guarded patch that
//! moves them. Pure: the route object in, JSON patch operations out.
//!
//! Only the weights of the arms' backends are written. The patch starts with a `test` of the
//! object's resourceVersion, so a concurrent writer makes it fail instead of being overwritten;
//! the router then reads the object again and recomputes.

use serde_json::{Value, json};

use super::route::{Backend, RouteError, RouteKind, RouteRule};
use crate::rollout::workload::Arm;

/// How a route's backends map to the arms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arms {
    pub stable: String,
    pub canary: String,
    /// The fresh baseline's Service, in that mode.
    pub baseline: Option<String>,
    /// Istio DestinationRule subsets `(stable, canary)` of one host, instead of Services.
    pub subsets: Option<(String, String)>,
    /// Istio: only these named http routes; all when empty.
    pub only: Vec<String>,
}

/// Canary and baseline shares of traffic, in percent; the stable has the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weights {
    pub canary: i32,
    pub baseline: i32,
}

impl std::fmt::Display for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "canary {}%", self.canary)?;
        if self.baseline > 0 {
            write!(f, ", baseline {}%", self.baseline)?;
        }
        Ok(())
    }
}

impl Arms {
    fn side(&self, b: &Backend) -> Option<Arm> {
        if let Some((stable, canary)) = &self.subsets {
            return match b.subset.as_deref() {
                Some(s) if s == stable => Some(Arm::Stable),
                Some(s) if s == canary => Some(Arm::Canary),
                _ => None,
            };
        }
        if b.service == self.stable {
            Some(Arm::Stable)
        } else if b.service == self.canary {
            Some(Arm::Canary)
        } else if self.baseline.as_deref() == Some(b.service.as_str()) {
            Some(Arm::Baseline)
        } else {
            None
        }
    }

    /// The rules rollguard weights: those that name both the stable and the canary.
    /// The weight a rule gives to one side, or to all the arms together.
    fn weight(&self, rule: &RouteRule, side: Option<Arm>) -> u64 {
        rule.backends
            .iter()
            .filter(|b| match side {
                Some(side) => self.side(b) == Some(side),
                None => self.side(b).is_some(),
            })
            .map(|b| u64::from(b.weight))
            .sum()
    }

    fn rules<'r>(&self, rules: &'r [RouteRule]) -> Result<Vec<&'r RouteRule>, RouteError> {
        let ours: Vec<&RouteRule> = rules
            .iter()
            .filter(|r| {
                self.only.is_empty() || r.name.as_ref().is_some_and(|n| self.only.contains(n))
            })
            .filter(|r| {
                let sides: Vec<Arm> = r.backends.iter().filter_map(|b| self.side(b)).collect();
                sides.contains(&Arm::Stable) && sides.contains(&Arm::Canary)
            })
            .collect();
        if ours.is_empty() {
            let (stable, canary) = match &self.subsets {
                Some((s, c)) => (format!("subset {s}"), format!("subset {c}")),
                None => (self.stable.clone(), self.canary.clone()),
            };
            return Err(RouteError::Invalid {
                path: "spec".into(),
                reason: format!("no rule sends traffic to both {stable} and {canary}"),
            });
        }
        if let Some(baseline) = &self.baseline
            && let Some(i) = ours.iter().position(|r| {
                !r.backends
                    .iter()
                    .any(|b| self.side(b) == Some(Arm::Baseline))
            })
        {
            return Err(RouteError::Invalid {
                path: "spec".into(),
                reason: format!("weighted rule {i} has no backend for the baseline {baseline}"),
            });
        }
        Ok(ours)
    }
}

/// The canary and baseline shares the route gives now. When rules disagree, the largest share
/// is reported, so a verification never passes on a partly written route.
pub fn read(kind: RouteKind, object: &Value, arms: &Arms) -> Result<Weights, RouteError> {
    let rules = kind.rules(object)?;
    let mut out = Weights::default();
    for rule in arms.rules(&rules)? {
        let total = arms.weight(rule, None);
        let share = |side: Arm| -> i32 {
            let w = arms.weight(rule, Some(side));
            (w * 100 + total / 2).checked_div(total).unwrap_or(0) as i32
        };
        out.canary = out.canary.max(share(Arm::Canary));
        out.baseline = out.baseline.max(share(Arm::Baseline));
    }
    Ok(out)
}

/// The JSON patch that gives the arms `desired`, guarded by the object's resourceVersion. Empty
/// when the route already carries those weights.
pub fn patch(
    kind: RouteKind,
    object: &Value,
    arms: &Arms,
    desired: Weights,
) -> Result<Vec<Value>, RouteError> {
    let rules = kind.rules(object)?;
    let mut ops = Vec::new();
    for rule in arms.rules(&rules)? {
        let current = arms.weight(rule, None);
        // SMI weights are relative: keep the rule's scale. The others are percentages.
        let total = if kind.relative_weights() && current > 0 {
            current
        } else {
            100
        };
        let part = |pct: i32| (total * pct.clamp(0, 100) as u64 + 50) / 100;
        let canary = part(desired.canary);
        let baseline = part(desired.baseline).min(total - canary);
        let stable = total - canary - baseline;
        for b in &rule.backends {
            let want = match arms.side(b) {
                Some(Arm::Stable) => stable,
                Some(Arm::Canary) => canary,
                Some(Arm::Baseline) => baseline,
                None => continue,
            };
            if u64::from(b.weight) != want || !has_weight(object, &b.weight_path) {
                ops.push(json!({"op": "add", "path": b.weight_path, "value": want}));
            }
        }
    }
    if ops.is_empty() {
        return Ok(ops);
    }
    let version = object["metadata"]["resourceVersion"]
        .as_str()
        .ok_or(RouteError::Missing {
            path: "metadata.resourceVersion".into(),
        })?;
    ops.insert(
        0,
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": version}),
    );
    Ok(ops)
}

fn has_weight(object: &Value, pointer: &str) -> bool {
    object.pointer(pointer).is_some_and(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arms() -> Arms {
        Arms {
            stable: "c-stable".into(),
            canary: "c-canary".into(),
            baseline: None,
            subsets: None,
            only: Vec::new(),
        }
    }

    fn http_route(stable: u32, canary: u32) -> Value {
        json!({"metadata": {"resourceVersion": "41"}, "spec": {"rules": [
            {"backendRefs": [
                {"name": "c-stable", "port": 80, "weight": stable},
                {"name": "c-canary", "port": 80, "weight": canary},
                {"name": "mirror", "port": 80, "weight": 7},
            ]},
            {"backendRefs": [{"name": "other", "port": 80}]},
        ]}})
    }

    #[test]
    fn a_patch_writes_only_the_arms_weights_and_tests_the_version() {
        let ops = patch(
            RouteKind::HttpRoute,
            &http_route(100, 0),
            &arms(),
            Weights {
                canary: 10,
                baseline: 0,
            },
        )
        .expect("patchable");
        assert_eq!(
            ops,
            vec![
                json!({"op": "test", "path": "/metadata/resourceVersion", "value": "41"}),
                json!({"op": "add", "path": "/spec/rules/0/backendRefs/0/weight", "value": 90}),
                json!({"op": "add", "path": "/spec/rules/0/backendRefs/1/weight", "value": 10}),
            ]
        );
        let done = patch(
            RouteKind::HttpRoute,
            &http_route(90, 10),
            &arms(),
            Weights {
                canary: 10,
                baseline: 0,
            },
        )
        .expect("patchable");
        assert!(done.is_empty(), "nothing to write: {done:?}");
        assert_eq!(
            read(RouteKind::HttpRoute, &http_route(90, 10), &arms()),
            Ok(Weights {
                canary: 10,
                baseline: 0
            })
        );
    }

    #[test]
    fn a_fresh_baseline_gets_the_canarys_share() {
        let vs = json!({"metadata": {"resourceVersion": "7"}, "spec": {"http": [
            {"name": "primary", "route": [
                {"destination": {"host": "c-stable"}, "weight": 100},
                {"destination": {"host": "c-canary"}, "weight": 0},
                {"destination": {"host": "c-baseline"}, "weight": 0},
            ]},
            {"name": "admin", "route": [
                {"destination": {"host": "c-stable"}, "weight": 100},
                {"destination": {"host": "c-canary"}, "weight": 0},
            ]},
        ]}});
        let mut a = arms();
        a.baseline = Some("c-baseline".into());
        a.only = vec!["primary".into()];
        let ops = patch(
            RouteKind::VirtualService,
            &vs,
            &a,
            Weights {
                canary: 20,
                baseline: 20,
            },
        )
        .expect("patchable");
        let paths: Vec<(&str, u64)> = ops[1..]
            .iter()
            .map(|o| {
                (
                    o["path"].as_str().unwrap_or_default(),
                    o["value"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            paths,
            vec![
                ("/spec/http/0/route/0/weight", 60),
                ("/spec/http/0/route/1/weight", 20),
                ("/spec/http/0/route/2/weight", 20)
            ]
        );
        a.only.clear();
        let err = patch(RouteKind::VirtualService, &vs, &a, Weights::default())
            .expect_err("admin lacks a baseline");
        assert!(
            err.to_string()
                .contains("no backend for the baseline c-baseline"),
            "{err}"
        );
    }

    #[test]
    fn subsets_and_relative_weights() {
        let vs = json!({"metadata": {"resourceVersion": "1"}, "spec": {"http": [{"route": [
            {"destination": {"host": "pay", "subset": "stable"}, "weight": 100},
            {"destination": {"host": "pay", "subset": "canary"}},
        ]}]}});
        let mut a = arms();
        a.subsets = Some(("stable".into(), "canary".into()));
        let ops = patch(
            RouteKind::VirtualService,
            &vs,
            &a,
            Weights {
                canary: 5,
                baseline: 0,
            },
        )
        .expect("patchable");
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert_eq!(
            ops[2],
            json!({"op": "add", "path": "/spec/http/0/route/1/weight", "value": 5})
        );
        let ts = json!({"metadata": {"resourceVersion": "3"}, "spec": {"backends": [
            {"service": "c-stable", "weight": 1000},
            {"service": "c-canary", "weight": 0},
        ]}});
        let ops = patch(
            RouteKind::TrafficSplit,
            &ts,
            &arms(),
            Weights {
                canary: 25,
                baseline: 0,
            },
        )
        .expect("patchable");
        assert_eq!(ops[1]["value"], 750);
        assert_eq!(ops[2]["value"], 250);
    }

    #[test]
    fn routes_without_the_arms_are_refused_by_name() {
        let route = json!({"metadata": {"resourceVersion": "1"}, "spec": {"rules": [
            {"backendRefs": [{"name": "c-stable", "weight": 100}]},
        ]}});
        let err = read(RouteKind::HttpRoute, &route, &arms()).expect_err("no canary backend");
        assert_eq!(
            err.to_string(),
            "field spec is invalid: no rule sends traffic to both c-stable and c-canary"
        );
    }

    #[test]
    fn disagreeing_rules_read_as_the_largest_share() {
        let route = json!({"metadata": {"resourceVersion": "1"}, "spec": {"rules": [
            {"backendRefs": [{"name": "c-stable", "weight": 100}, {"name": "c-canary", "weight": 0}]},
            {"backendRefs": [{"name": "c-stable", "weight": 70}, {"name": "c-canary", "weight": 30}]},
        ]}});
        assert_eq!(
            read(RouteKind::HttpRoute, &route, &arms()).map(|w| w.canary),
            Ok(30)
        );
    }
}
