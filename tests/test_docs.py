"""``make docs``: the results page and the README's headline come from the JSON reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from same_defense.reporting.docs import BEGIN, END, load_reports, results_page, splice_readme

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
    readme = f"intro\n{BEGIN}\nstale table\n{END}\noutro\n"
    out = splice_readme(readme, load_reports(tmp_path))
    assert out.startswith("intro\n") and out.endswith(f"{END}\noutro\n")
    assert "stale table" not in out and "0.9600" in out
    with pytest.raises(ValueError, match="markers"):
        splice_readme("no markers here", {})


def test_the_real_readme_has_the_markers():
    text = (PROJECT_ROOT / "README.md").read_text()
    assert text.index(BEGIN) < text.index(END)
