#!/usr/bin/env python3
"""Writes charts/rollguard/dashboards/rollguard.json, the Grafana dashboard the chart ships.

The panels are listed here as data; `make dashboard` rewrites the JSON, and a unit test checks
that every series a panel queries is one the controller exports.
"""
import json
import pathlib
import sys

# (title, unit, [(legend, promql)], panel type, width)
ROWS = [
    ("DORA: delivery performance", [
        ("Deployments per day, by result", "short", [
            ("{{result}}", 'sum by (result) (increase(rollguard_deployments_total{namespace=~"$namespace"}[1d]))'),
        ], "timeseries", 8),
        ("Change failure rate (7 d)", "percentunit", [
            ("rolled back / (promoted + rolled back)",
             'sum(increase(rollguard_deployments_total{namespace=~"$namespace",result="rolled_back"}[7d]))'
             ' / clamp_min(sum(increase(rollguard_deployments_total{namespace=~"$namespace",result=~"promoted|rolled_back"}[7d])), 1)'),
        ], "stat", 4),
        ("Rework: canaries within the window of a rollback (7 d)", "short", [
            ("{{namespace}}/{{rollout}}", 'sum by (namespace, rollout) (increase(rollguard_rework_deployments_total{namespace=~"$namespace"}[7d])) > 0'),
        ], "timeseries", 6),
        ("Deployments by service (7 d)", "short", [
            ("{{namespace}}/{{rollout}} {{result}}", 'sum by (namespace, rollout, result) (increase(rollguard_deployments_total{namespace=~"$namespace"}[7d])) > 0'),
        ], "table", 6),
    ]),
    ("Time to restore", [
        ("Breach to weight 0 (time to roll back)", "s", [
            ("p50", 'histogram_quantile(0.5, sum by (le) (rate(rollguard_breach_to_weight_zero_seconds_bucket{namespace=~"$namespace"}[1d])))'),
            ("p95", 'histogram_quantile(0.95, sum by (le) (rate(rollguard_breach_to_weight_zero_seconds_bucket{namespace=~"$namespace"}[1d])))'),
            ("mean", 'sum(rate(rollguard_breach_to_weight_zero_seconds_sum{namespace=~"$namespace"}[1d])) / sum(rate(rollguard_breach_to_weight_zero_seconds_count{namespace=~"$namespace"}[1d]))'),
        ], "timeseries", 12),
        ("Breach to recovery, and weight 0 to recovery", "s", [
            ("breach to recovery p95", 'histogram_quantile(0.95, sum by (le) (rate(rollguard_breach_to_recovery_seconds_bucket{namespace=~"$namespace"}[1d])))'),
            ("weight 0 to recovery p95", 'histogram_quantile(0.95, sum by (le) (rate(rollguard_weight_zero_to_recovery_seconds_bucket{namespace=~"$namespace"}[1d])))'),
        ], "timeseries", 12),
    ]),
    ("Rollouts now", [
        ("Rollouts by phase", "short", [
            ("{{phase}}", 'sum by (phase) (max by (namespace, rollout, phase) (rollguard_rollout_phase{namespace=~"$namespace"}))'),
        ], "bargauge", 8),
        ("Canary weight", "percent", [
            ("{{namespace}}/{{rollout}}", 'max by (namespace, rollout) (rollguard_canary_weight_percent{namespace=~"$namespace"}) > 0'),
        ], "timeseries", 8),
        ("Rollouts rolling back or blocked", "short", [
            ("{{namespace}}/{{rollout}} {{phase}}", 'max by (namespace, rollout, phase) (rollguard_rollout_phase{namespace=~"$namespace",phase=~"RollingBack|Blocked"}) > 0'),
        ], "table", 8),
    ]),
    ("Decisions and analysis", [
        ("Decisions by reason (1 h)", "short", [
            ("{{reason}}", "sum by (reason) (increase(rollguard_decisions_total[1h])) > 0"),
        ], "timeseries", 8),
        ("Measurements by verdict", "ops", [
            ("{{verdict}}", "sum by (verdict) (rate(rollguard_measurements_total[5m]))"),
        ], "timeseries", 8),
        ("Prometheus queries: p95 latency and errors", "s", [
            ("p95 {{provider}}", "histogram_quantile(0.95, sum by (le, provider) (rate(rollguard_prometheus_query_seconds_bucket[5m])))"),
            ("errors/s {{provider}}", "sum by (provider) (rate(rollguard_prometheus_query_errors_total[5m]))"),
        ], "timeseries", 8),
    ]),
    ("The controller", [
        ("Reconcile p95 and errors", "s", [
            ("p95", "histogram_quantile(0.95, sum by (le) (rate(rollguard_reconcile_seconds_bucket[5m])))"),
            ("errors/s", "sum(rate(rollguard_reconcile_errors_total[5m]))"),
            ("analysis p95", "histogram_quantile(0.95, sum by (le) (rate(rollguard_analysis_seconds_bucket[5m])))"),
        ], "timeseries", 8),
        ("Escalations by receiver and outcome (1 h)", "short", [
            ("{{receiver}} {{outcome}}", "sum by (receiver, outcome) (increase(rollguard_escalations_total[1h])) > 0"),
        ], "timeseries", 8),
        ("Leader and writes", "short", [
            ("leader {{pod}}", "max by (pod) (rollguard_leader)"),
            ("writes/s {{outcome}}", "sum by (outcome) (rate(rollguard_kube_writes_total[5m]))"),
        ], "timeseries", 8),
    ]),
]


def panel(pid, title, unit, targets, kind, x, y, w):
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for i, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard():
    panels, pid, y = [], 1, 0
    for row_title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for title, unit, targets, kind, w in row:
            panels.append(panel(pid, title, unit, targets, kind, x, y, w))
            pid, x = pid + 1, x + w
        y += 8
    return {
        "title": "rollguard",
        "uid": "rollguard",
        "description": "Progressive delivery with rollguard: DORA figures, time to roll back, rollouts, analysis and the controller.",
        "tags": ["rollguard", "progressive-delivery", "dora"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-7d", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "namespace", "type": "query", "label": "Namespace", "includeAll": True, "multi": True,
             "allValue": ".*", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(rollguard_rollout_phase, namespace)", "refresh": 2},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = pathlib.Path(__file__).resolve().parent.parent / "charts/rollguard/dashboards/rollguard.json"
    text = json.dumps(dashboard(), indent=2) + "\n"
    if sys.argv[1:] == ["--check"]:
        if not out.exists() or out.read_text() != text:
            sys.exit(f"{out} differs from scripts/dashboard.py: run `make dashboard` and commit it")
        sys.exit(0)
    out.write_text(text)
    print(f"wrote {out}")
