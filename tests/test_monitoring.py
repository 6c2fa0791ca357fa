"""The Grafana dashboard and the alert rules: rendered from the code's metric names, committed
as rendered, well-formed (promtool where installed), every alert explained in the docs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from same_defense.core import layout
from same_defense.deploy import DeploySettings
from same_defense.deploy.observability import (
    DASHBOARD_FILE,
    RULES_FILE,
    TRITON_METRICS,
    _q,
    gateway_metric_names,
    metric_names_in,
    render_monitoring,
    triton_step_metric_names,
)
from same_defense.gateway.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"


def test_committed_dashboard_and_rules_equal_a_fresh_render():
    for name, text in render_monitoring(DeploySettings()).items():
        assert (MONITORING / name).read_text() == text, f"deploy/monitoring/{name}: make deploy"


def _code_metric_names() -> set[str]:
    """What the code exports, found independently of the renderer's own lookup."""
    exported = set()
    for family in GatewayMetrics().registry.collect():
        for sample in family.samples:  # a labelled family without samples shows none
            exported.add(sample.name)
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    # The defense step names its metrics by the repository contract's constants: registered
    # as they are (counters) or with a suffix (f"{SCORE_METRIC}_bucket").
    step = (ROOT / "src/same_defense/serving/triton_step/model.py").read_text()
    for constant in set(re.findall(r"\b([A-Z]+(?:_[A-Z]+)*_METRIC)\b", step)):
        name = getattr(layout, constant)
        suffixes = re.findall(r"\{" + constant + r"\}_(\w+)\"", step)
        exported |= {f"{name}_{suffix}" for suffix in suffixes} if suffixes else {name}
    return exported | set(TRITON_METRICS)


def committed_queries() -> list[str]:
    """Every PromQL expression of the committed dashboard and alert rules."""
    board = json.loads((MONITORING / DASHBOARD_FILE).read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    (rule,) = yaml.safe_load_all((MONITORING / RULES_FILE).read_text())
    return exprs + [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def test_dashboard_and_rules_name_only_metrics_the_code_defines():
    used = set().union(*(metric_names_in(q) for q in committed_queries()))
    assert used - _code_metric_names() == set()
    # and the ones that matter are there: requests, flags, score, suspicions, store errors
    for name in (
        "same_gateway_requests_total",
        "same_queries_flagged_total",
        "same_queries_scored_total",
        "same_score_bucket",
        "same_gateway_suspicions_total",
        "same_gateway_state_errors_total",
        "nv_inference_request_failure",
    ):
        assert name in used, name
    assert "same_gateway_requests_total" in gateway_metric_names()
    assert "same_queries_flagged_total" in triton_step_metric_names()


def test_a_query_naming_an_unknown_metric_fails_the_render():
    with pytest.raises(ValueError, match="same_gateway_renamed_total"):
        _q("sum(rate(same_gateway_renamed_total[5m]))")


def test_dashboard_is_well_formed():
    board = json.loads((MONITORING / DASHBOARD_FILE).read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"])
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("account state", "calibrated fpr", "suspected", "score", "latency"):
        assert topic in titles, topic


def _rules() -> dict:
    (rule,) = yaml.safe_load_all((MONITORING / RULES_FILE).read_text())
    return rule


def test_prometheus_rule_is_well_formed_and_each_alert_is_explained():
    rule = _rules()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == DeploySettings().namespace
    operations = (ROOT / "docs" / "operations.md").read_text().lower()
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    assert {
        "SameFlagRateFarFromCalibration",
        "SameSuspicionBurst",
        "SameStateStoreErrors",
        "SameTritonStubDown",
    } <= names
    for alert in alerts:
        assert alert["labels"]["severity"] in ("info", "warning", "critical")
        assert alert["annotations"]["summary"] and alert["expr"]
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert f"### {alert['alert'].lower()}" in operations, f"docs/operations.md: {anchor}"


def test_flag_rate_alert_follows_the_calibrated_fpr():
    files = render_monitoring(DeploySettings(target_fpr=0.05, flag_rate_factor=2.0))
    assert "> 0.1 or" in files[RULES_FILE] and "< 0.025)" in files[RULES_FILE]
    assert "vector(0.05)" in files[DASHBOARD_FILE]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_rules(tmp_path):
    plain = tmp_path / "rules.yml"
    plain.write_text(yaml.safe_dump(_rules()["spec"]))
    checked = subprocess.run(["promtool", "check", "rules", str(plain)], capture_output=True)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
