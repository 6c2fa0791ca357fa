"""``make docs``: the results page and the README's headline come from the JSON reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from same_harness.docs import BEGIN, END, load_reports, results_page, splice_readme
from same_harness.reporting.cost import COST_BEGIN, COST_END

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO = {
    "victim_test_accuracy": 0.97,
    "served_benign_accuracy": 0.96,
    "accounts": {"honest": {"queries": 10, "suspected": False, "suspected_after_queries": None}},
}
BENCH = {
    "goals": {"8": {"throughput_ratio_at_saturation": 0.25, "p99_ratio_at_concurrency_16": 3.0}},
    "saturation": {"8": {"same_images_per_s": 100.0, "victim_images_per_s": 400.0}},
}


def test_results_page_shows_what_the_reports_hold_and_names_missing_ones(tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps(DEMO))
    (tmp_path / "bench.json").write_text(json.dumps(BENCH))
    reports = load_reports(tmp_path)
    page = results_page(reports)
    assert "| victim test accuracy | 0.9700 | `make demo` |" in page
    assert "| same / victim throughput, batch 8 | 0.250 | `make bench` |" in page
    assert "Run `make evaluate`." in page  # no evaluation report: the page says what fills it


def test_readme_headline_is_rewritten_between_its_markers(tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps(DEMO))
    readme = (
        f"intro\n{BEGIN}\nstale table\n{END}\nmiddle\n{COST_BEGIN}\nold cost\n{COST_END}\nend\n"
    )
    out = splice_readme(readme, load_reports(tmp_path))
    assert out.startswith("intro\n") and out.endswith(f"{COST_END}\nend\n")
    assert f"{END}\nmiddle\n{COST_BEGIN}" in out
    assert "stale table" not in out and "0.9600" in out
    assert "old cost" not in out and "run `make bench`" in out
    with pytest.raises(ValueError, match="markers"):
        splice_readme("no markers here", {})


def test_the_real_readme_has_the_markers():
    text = (PROJECT_ROOT / "README.md").read_text()
    assert text.index(BEGIN) < text.index(END) < text.index(COST_BEGIN) < text.index(COST_END)


def test_cost_block_shows_goals_best_point_and_the_candidates_worst_auroc_change(tmp_path):
    bench = {
        **BENCH,
        "goals": {
            "8": {"throughput_ratio_at_saturation": 0.25, "p99_ratio_at_concurrency_16": 3.0},
            "64": {"throughput_ratio_at_saturation": 0.3, "p99_ratio_at_concurrency_16": 2.5},
        },
        "resnet18": {"goals": {"8": {"throughput_ratio_at_saturation": 0.8}}},
    }
    variants = {
        "baseline": "float32",
        "chosen": "float32",
        "auroc_tolerance": 0.005,
        "rows": [
            {
                "name": "float32",
                "reconstructor_us": {"batch64": 1000.0},
                "victim_share": 0.15,
                "auroc": {"jbda": 0.96, "noise": 1.0},
            },
            {
                "name": "small",
                "reconstructor_us": {"batch64": 250.0},
                "victim_share": 0.4,
                "auroc": {"jbda": 0.90, "noise": 1.0},
                "detection_delay": {"jbda": 12, "noise": None},
            },
        ],
    }
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    (tmp_path / "variants.json").write_text(json.dumps(variants))
    readme = f"{BEGIN}\n{END}\n{COST_BEGIN}\n{COST_END}\n"
    out = splice_readme(readme, load_reports(tmp_path))
    assert "same/victim 0.300 at batch 64, p99 ratio 2.50 at batch 64; goals not met" in out
    assert "| 8 | 100 | - | 400 | 0.250 | 3.00 | 0.800 | - |" in out
    assert "| float32 (chosen) | 1000 | 1.00 | 0.15 | +0.0000 (jbda) | yes | - |" in out
    assert "| small | 250 | 0.25 | 0.40 | -0.0600 (jbda) | no | 12 / - |" in out
