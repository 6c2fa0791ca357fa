"""The Grafana dashboard and the Prometheus alert rules, rendered from the code's metric names.

Every metric a query names is looked up in what the code defines: the gateway's registry
(:class:`~same_defense.gateway.metrics.GatewayMetrics`, instantiated and collected), the
Triton step's families (the string literals of ``serving/triton_step/model.py``, which runs
inside Triton and cannot be imported here) and the Triton metrics the project already reads
(:data:`TRITON_METRICS`). A renamed metric fails the render, not a dashboard in production.

Written to ``deploy/monitoring/`` (outside ``deploy/k8s/``: a ``PrometheusRule`` needs the
Prometheus operator's CRD, and ``kubectl apply -f deploy/k8s`` must work without it).
"""

from __future__ import annotations

import json
import re
from functools import cache

from ..core.layout import (
    FLAGGED_METRIC,
    FORCED_METRIC,
    INVALID_METRIC,
    SCORE_METRIC,
    SCORED_METRIC,
)
from .settings import DeploySettings
from .shapes import PART_OF, _meta

DASHBOARD_FILE = "grafana-dashboard.json"
RULES_FILE = "prometheus-rules.yaml"
DASHBOARD_UID = "same-defense"
# Triton's own metrics the dashboard and rules read (the HPA adapter reads the first two).
TRITON_METRICS = frozenset(
    {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_request_duration_us",
        "nv_inference_count",
    }
)
_METRIC = re.compile(r"\b((?:same|nv)_[a-z0-9_]+)\b")


@cache
def gateway_metric_names() -> frozenset[str]:
    """The gateway's exported names (counters with their ``_total``), from its registry."""
    from ..gateway.metrics import GatewayMetrics

    names = set()
    for family in GatewayMetrics().registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return frozenset(names)


def triton_step_metric_names() -> frozenset[str]:
    """The defense step's metric families, as the repository contract names them (the step
    registers exactly these)."""
    counters = (SCORED_METRIC, FLAGGED_METRIC, INVALID_METRIC, FORCED_METRIC)
    # A histogram written by hand: its families are NAME_bucket/_sum/_count; queries use
    # histogram_quantile(NAME_bucket), rate(NAME_sum) ... so list them as they are.
    histogram = (f"{SCORE_METRIC}_{part}" for part in ("bucket", "sum", "count"))
    return frozenset((*counters, *histogram))


def known_metric_names() -> frozenset[str]:
    return gateway_metric_names() | triton_step_metric_names() | TRITON_METRICS


def metric_names_in(text: str) -> set[str]:
    """Every ``same_*`` / ``nv_*`` metric name a PromQL text (or a whole file) mentions."""
    return set(_METRIC.findall(text))


def _q(expr: str) -> str:
    """A PromQL expression, checked against the code's metric names as it is rendered."""
    unknown = metric_names_in(expr) - known_metric_names()
    if unknown:
        raise ValueError(f"query names metrics the code does not define: {sorted(unknown)}")
    return expr


def _flag_rate(window: str) -> str:
    return _q(
        f"sum(rate(same_queries_flagged_total[{window}])) / "
        f"clamp_min(sum(rate(same_queries_scored_total[{window}])), 1e-9)"
    )


# --- alert rules ----------------------------------------------------------------------------


def alert_rules(s: DeploySettings) -> list[dict]:
    """The alerts docs/operations.md explains, one by one (what it means, what to do)."""
    fpr, factor = s.target_fpr, s.flag_rate_factor
    volume = _q("sum(rate(same_queries_scored_total[30m])) * 1800")
    return [
        _alert(
            "SameFlagRateFarFromCalibration",
            f"({_flag_rate('30m')} > {fpr * factor:g} or {_flag_rate('30m')} < {fpr / factor:g})"
            f" and {volume} > {s.flag_rate_min_queries}",
            "30m",
            "warning",
            f"Flag rate {{{{ $value | humanizePercentage }}}} is far from the calibrated FPR "
            f"{fpr:g}: traffic drifted or an attack is under way",
        ),
        _alert(
            "SameSuspicionBurst",
            _q(f"sum(increase(same_gateway_suspicions_total[10m])) > {s.suspicion_burst}"),
            "0m",
            "warning",
            "{{ $value }} accounts became suspected in 10 minutes (Sybil campaign or a "
            "false-alarm wave)",
        ),
        _alert(
            "SameTrafficDrift",
            _q("max(same_gateway_drift_active) > 0"),
            "0m",
            "warning",
            "Many unrelated established accounts alarmed together: the traffic has drifted "
            "from the calibration data; their alarms are held (answered normally). Look at "
            "the held accounts, then recalibrate with data from the new source or confirm "
            "the thieves (docs/operations.md)",
        ),
        _alert(
            "SameStateStoreErrors",
            _q("sum(rate(same_gateway_state_errors_total[5m])) > 0"),
            "2m",
            "critical",
            "The gateways cannot reach the account-state store: refusing service "
            "(--on-store-error closed) or serving without the account test (open)",
        ),
        _alert(
            "SameTritonStubDown",
            _q(
                'sum by (pod) (rate(nv_inference_request_failure{model="defense"}[5m])) > 0 '
                'unless sum by (pod) (rate(nv_inference_request_success{model="defense"}[5m])) '
                "> 0"
            ),
            "2m",
            "critical",
            "Triton pod {{ $labels.pod }}: every `defense` request fails (a dead Python "
            "stub stays READY in the NGC image); restart the pod",
        ),
        _alert(
            "SameAuthFailuresHigh",
            _q("sum(rate(same_gateway_auth_failures_total[5m])) > 5"),
            "10m",
            "info",
            "More than 5 calls/s are refused for a missing or unknown key (key guessing, or "
            "a customer using a revoked key)",
        ),
    ]


def _alert(name: str, expr: str, wait: str, severity: str, summary: str) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity, "app_kubernetes_io_part_of": PART_OF},
        "annotations": {
            "summary": summary,
            "runbook_url": f"docs/operations.md#{name.lower()}",
        },
    }


def prometheus_rule(s: DeploySettings) -> dict:
    """The ``PrometheusRule`` (monitoring.coreos.com/v1) the Prometheus operator loads."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _meta("same-alerts", s),
        "spec": {"groups": [{"name": "same-defense", "rules": alert_rules(s)}]},
    }


# --- dashboard ------------------------------------------------------------------------------


def _panel(pid: int, title: str, targets: list[tuple[str, str]], x: int, y: int, **kw) -> dict:
    panel = {
        "id": pid,
        "type": kw.pop("kind", "timeseries"),
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": kw.pop("w", 12), "x": x, "y": y},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": _q(expr), "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    unit = kw.pop("unit", None)
    if unit:
        panel["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    panel.update(kw)
    return panel


def dashboard(s: DeploySettings) -> dict:
    rate = "[$__rate_interval]"
    score = f"sum by (le) (rate(same_score_bucket{rate}))"  # cumulative buckets, as any histogram
    panels = [
        _panel(
            1,
            "Requests by account state",
            [
                (
                    f"sum by (account_state) (rate(same_gateway_requests_total{rate}))",
                    "{{account_state}}",
                )
            ],
            0,
            0,
            unit="reqps",
        ),
        _panel(
            2,
            "Flag rate against the calibrated FPR",
            [
                (_flag_rate("$__rate_interval"), "flag rate"),
                (f"vector({s.target_fpr:g})", "calibrated FPR"),
            ],
            12,
            0,
            unit="percentunit",
        ),
        _panel(
            3,
            "Accounts becoming suspected",
            [(f"sum(increase(same_gateway_suspicions_total{rate}))", "suspicions")],
            0,
            8,
        ),
        _panel(
            4,
            "Samples answered by account state (suspected: with the policy)",
            [
                (
                    f"sum by (account_state) (rate(same_gateway_queries_total{rate}))",
                    "{{account_state}}",
                ),
                (f"sum(rate(same_queries_suspected_account_total{rate}))", "Triton: forced"),
            ],
            12,
            8,
            unit="short",
        ),
        _panel(
            5,
            "SAME score quantiles (buckets: multiples of the threshold)",
            [
                (f"histogram_quantile(0.5, {score})", "p50"),
                (f"histogram_quantile(0.99, {score})", "p99"),
            ],
            0,
            16,
        ),
        _panel(
            6,
            "Latency per request (Triton, by model)",
            [
                (
                    f"sum by (model) (rate(nv_inference_request_duration_us{rate})) / "
                    f"clamp_min(sum by (model) (rate(nv_inference_request_success{rate})), 1e-9)"
                    " / 1000",
                    "{{model}}",
                ),
                (
                    f'sum(rate(nv_inference_queue_duration_us{{model="reconstructor"}}{rate})) / '
                    "clamp_min(sum(rate(nv_inference_request_success"
                    f'{{model="reconstructor"}}{rate})), 1e-9) / 1000',
                    "reconstructor queue",
                ),
            ],
            12,
            16,
            unit="ms",
        ),
        _panel(
            7,
            "Errors: state store, auth, Triton failures, invalid input",
            [
                (f"sum(rate(same_gateway_state_errors_total{rate}))", "state store"),
                (f"sum(rate(same_gateway_auth_failures_total{rate}))", "auth failures"),
                (f"sum by (model) (rate(nv_inference_request_failure{rate}))", "Triton {{model}}"),
                (f"sum(rate(same_requests_invalid_total{rate}))", "invalid input"),
            ],
            0,
            24,
            w=24,
            unit="reqps",
        ),
        _panel(
            8,
            "Accounts seen (per gateway)",
            [("sum(same_gateway_accounts_seen)", "accounts")],
            0,
            32,
            kind="stat",
            w=24,
        ),
    ]
    return {
        "uid": DASHBOARD_UID,
        "title": "SAME model-extraction defense",
        "tags": [PART_OF],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render_monitoring(s: DeploySettings) -> dict[str, str]:
    """``{file name: text}`` of ``deploy/monitoring/``."""
    from .render import to_yaml

    return {
        DASHBOARD_FILE: json.dumps(dashboard(s), indent=2) + "\n",
        RULES_FILE: to_yaml([prometheus_rule(s)]),
    }
