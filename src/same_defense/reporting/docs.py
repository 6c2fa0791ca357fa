"""``make docs``: ``docs/results.md`` and the README's headline table, from ``reports/*.json``.

Every figure in the results page comes from a JSON report that a make target wrote; each
section names that target and when its report was written. Run the targets first (``make
demo``, ``make evaluate``, ``make bench``, ...); a missing report leaves its section saying
which command fills it. The README's headline table sits between two markers and is
rewritten in place, so it cannot drift from the reports either.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..evaluation import accounts_report
from ..evaluation import report as evaluation_report
from .markdown import cell, table

log = logging.getLogger("same.docs")
BEGIN, END = "<!-- results:begin (make docs) -->", "<!-- results:end -->"
# report file -> the command that writes it
SOURCES = {
    "demo": "make demo",
    "evaluation": "make evaluate",
    "accounts": "make evaluate (python -m same_defense.evaluation.accounts)",
    "recipes": "make evaluate (python -m same_defense.evaluation.recipes)",
    "bench": "make bench",
    "cluster": "make cluster",
    "variants": "make variants",
}


def load_reports(folder: Path) -> dict[str, dict]:
    """The reports present in ``folder``, each with ``_written`` (its file's time, UTC)."""
    out = {}
    for name in SOURCES:
        path = folder / f"{name}.json"
        if path.exists():
            report = json.loads(path.read_text())
            stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
            out[name] = {**report, "_written": stamp}
    return out


def _source(name: str, reports: dict[str, dict]) -> str:
    written = reports[name]["_written"] if name in reports else "not run"
    return f"`{SOURCES[name]}` ({written})"


def headline_rows(reports: dict[str, dict]) -> list[list]:
    """``[what, figure, source]`` rows for the figures a newcomer asks about first."""
    rows: list[list] = []
    demo, ev, acc, bench = (reports.get(k) for k in ("demo", "evaluation", "accounts", "bench"))
    if demo:
        rows.append(["victim test accuracy", cell(demo["victim_test_accuracy"], 4), "demo"])
        rows.append(
            ["accuracy served to honest users", cell(demo["served_benign_accuracy"], 4), "demo"]
        )
    if ev:
        for d in ev["detection"]:
            if d["detector"] == "same-a0.99":
                rows.append([f"per-query AUROC, {d['attack']}", cell(d["auroc"]), "evaluation"])
    if acc:
        for r in acc["one_account"]:
            if r["output"] == "probs":
                figure = (
                    f"{cell(r['undefended_accuracy_mean'])} -> {cell(r['clone_accuracy_mean'])}"
                )
                rows.append([f"clone accuracy, one account, {r['attack']}", figure, "accounts"])
        honest = acc["honest"]["overall"]
        rows.append(
            [
                "honest accounts suspected",
                f"{honest['suspected']} / {honest['accounts']}",
                "accounts",
            ]
        )
    if bench:
        for batch, goal in bench.get("goals", {}).items():
            ratio = goal.get("throughput_ratio_at_saturation")
            rows.append([f"same / victim throughput, batch {batch}", cell(ratio), "bench"])
    return [[what, figure, f"`{SOURCES[src].split(' (')[0]}`"] for what, figure, src in rows]


def headline(reports: dict[str, dict]) -> list[str]:
    """The headline table (README and results page)."""
    rows = headline_rows(reports)
    if not rows:
        return [
            "No reports yet: run `make demo`, `make evaluate`, `make bench`, then `make docs`.",
            "",
        ]
    return table(["figure", "measured", "command"], rows)


def _bench_section(bench: dict) -> list[str]:
    rows = []
    for batch, goal in bench.get("goals", {}).items():
        sat = bench.get("saturation", {}).get(batch, {})
        rows.append(
            [
                batch,
                sat.get("same_images_per_s"),
                sat.get("victim_images_per_s"),
                sat.get("gateway_same_images_per_s"),
                goal.get("throughput_ratio_at_saturation"),
                goal.get("p99_ratio_at_concurrency_16"),
            ]
        )
    header = [
        "batch",
        "same img/s",
        "victim img/s",
        "gateway same img/s",
        "same/victim",
        "p99 ratio c16",
    ]
    return table(header, rows)


def _demo_section(demo: dict) -> list[str]:
    rows = [
        [k, v["queries"], v["suspected"], v["suspected_after_queries"]]
        for k, v in demo["accounts"].items()
    ]
    return table(["account", "queries", "suspected", "after queries"], rows)


def _evaluation_section(ev: dict) -> list[str]:
    parts = (evaluation_report._goals, evaluation_report._detection, evaluation_report._extraction)
    return [
        line.replace("## ", "### ", 1) if line.startswith("## ") else line
        for p in parts
        for line in p(ev)
    ]


def _accounts_section(acc: dict) -> list[str]:
    lines = accounts_report.markdown_lines(acc)[2:]  # without its title
    return [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in lines]


def _recipes_section(rec: dict) -> list[str]:
    rows = [
        [recipe, name, *row.values()]
        for recipe, t in rec["recipes"].items()
        for name, row in t.items()
    ]
    keys = list(next(iter(next(iter(rec["recipes"].values())).values())))
    return table(["recipe", "query set", *keys], rows)


SECTIONS: dict[str, tuple[str, Callable[[dict], list[str]]]] = {
    "demo": ("Demo: accounts", _demo_section),
    "evaluation": ("Per-query evaluation", _evaluation_section),
    "accounts": ("Account-level evaluation", _accounts_section),
    "recipes": ("Shadow recipes: per-query AUROC", _recipes_section),
    "bench": ("Serving cost", _bench_section),
}


def results_page(reports: dict[str, dict]) -> str:
    """``docs/results.md``: the headline, then one section per report."""
    out = [
        "# Measured results",
        "",
        "Generated by `make docs` from `reports/*.json`; do not edit by hand. Each section names "
        "the command whose report it shows and when that report was written.",
        "",
        "## Headline",
        "",
        *headline(reports),
    ]
    for name, (title, section) in SECTIONS.items():
        out += [f"## {title}", "", f"From {_source(name, reports)}.", ""]
        out += section(reports[name]) if name in reports else [f"Run `{SOURCES[name]}`.", ""]
    return "\n".join(out)


def splice_readme(readme: str, reports: dict[str, dict]) -> str:
    """``readme`` with the text between the markers replaced by the headline table."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README has no {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + "\n".join(headline(reports)) + END + tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--reports", type=Path, default=Path("reports"))
    p.add_argument("--out", type=Path, default=Path("docs/results.md"))
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reports = load_reports(args.reports)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(results_page(reports))
    args.readme.write_text(splice_readme(args.readme.read_text(), reports))
    log.info(
        "wrote %s and the headline of %s from %d report(s)", args.out, args.readme, len(reports)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
