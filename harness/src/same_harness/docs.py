"""``make docs``: ``docs/results.md`` and the README's headline table, from ``reports/*.json``.

Every figure in the results page comes from a JSON report that a make target wrote; each
section names that target and when its report was written. Run the targets first (``make
demo``, ``make evaluate``, ``make bench``, ...); a missing report leaves its section saying
which command fills it. The README's headline table and its cost block (``reporting.cost``)
sit between markers and are rewritten in place, so they cannot drift from the reports either.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from .evaluation import accounts_report, clone_spread
from .evaluation import report as evaluation_report
from .reporting import cost
from .reporting.markdown import cell, table

log = logging.getLogger("same.docs")
BEGIN, END = "<!-- results:begin (make docs) -->", "<!-- results:end -->"
# report file -> the command that writes it
SOURCES = {
    "demo": "make demo",
    "evaluation": "make evaluate",
    "accounts": "make evaluate (python -m same_harness.evaluation.accounts)",
    "recipes": "make evaluate (python -m same_harness.evaluation.recipes)",
    "clone_spread": "make evaluate (python -m same_harness.evaluation.clone_spread)",
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


def _demo_rows(demo: dict) -> list[list]:
    return [
        ["victim test accuracy", cell(demo["victim_test_accuracy"], 4)],
        ["accuracy served to honest users", cell(demo["served_benign_accuracy"], 4)],
    ]


def _evaluation_rows(ev: dict) -> list[list]:
    served = [d for d in ev["detection"] if d["detector"] == "same-a0.99"]
    return [[f"per-query AUROC, {d['attack']}", cell(d["auroc"])] for d in served]


def _accounts_rows(acc: dict) -> list[list]:
    if "summary" not in acc:  # a report written before the thieves adapted (schema 1)
        return []
    rows = [
        [
            f"clone accuracy, one account, 1 image/request, {r['attack']} ({r['output']})",
            f"{cell(r['undefended'])} -> {cell(r['one_account_mean'])}"
            + (f" (own labels {cell(r['own_labels'])})" if r.get("own_labels") else ""),
        ]
        for r in acc["summary"]["thieves"]
        if r["output"] == "probs" and r["one_account_mean"] is not None
    ]
    rows += [
        [
            f"cost to steal (unrelated accounts), {r['attack']} ({r['output']})",
            cell(r["cost_to_steal"]) if r["cost_to_steal"] else f"> {r['max_accounts']}",
        ]
        for r in acc["summary"]["thieves"]
        if r["output"] == "probs" and r["max_accounts"] > 1  # swept over accounts
    ]
    honest = acc["honest"]["overall"]
    strong = honest.get("strong", honest["suspected"])
    return rows + [
        [
            "honest accounts reviewed / answered as suspected",
            f"{honest['suspected'] - strong} / {strong} of {honest['accounts']}",
        ]
    ]


def _bench_rows(bench: dict) -> list[list]:
    rows = [
        [
            f"same / victim throughput, batch {batch}",
            cell(goal.get("throughput_ratio_at_saturation")),
        ]
        for batch, goal in bench.get("goals", {}).items()
    ]
    one = bench.get("batch1") or {}
    labels = {
        "same_added_p50_ms": "batch 1: `same` p50 over the victim, ms",
        "gateway_added_p50_ms": "batch 1: the gateway's added p50, ms",
        "gateway_cpu_ms_per_request": "gateway CPU per request, ms",
    }
    return rows + [[label, cell(one[key])] for key, label in labels.items() if key in one]


def _cluster_rows(cluster: dict) -> list[list]:
    checks = cluster["checks"]
    return [
        [
            "2 replicas vs 1, images/s (same 2 cores)",
            cell(cluster["cluster_vs_single"]["images_per_s"]),
        ],
        ["cluster checks passed", f"{sum(checks.values())} / {len(checks)}"],
    ]


HEADLINE_ROWS: dict[str, Callable[[dict], list[list]]] = {
    "demo": _demo_rows,
    "evaluation": _evaluation_rows,
    "accounts": _accounts_rows,
    "bench": _bench_rows,
    "cluster": _cluster_rows,
}


def headline_rows(reports: dict[str, dict]) -> list[list]:
    """``[what, figure, command]`` rows for the figures a newcomer asks about first."""
    return [
        [what, figure, f"`{SOURCES[name].split(' (')[0]}`"]
        for name, rows in HEADLINE_ROWS.items()
        if name in reports
        for what, figure in rows(reports[name])
    ]


def headline(reports: dict[str, dict]) -> list[str]:
    """The headline table (README and results page)."""
    rows = headline_rows(reports)
    if not rows:
        return [
            "No reports yet: run `make demo`, `make evaluate`, `make bench`, then `make docs`.",
            "",
        ]
    return table(["figure", "measured", "command"], rows)


def _demo_section(demo: dict) -> list[str]:
    rows = [
        [
            k,
            v["queries"],
            v["suspected"],
            v["suspected_after_queries"],
            v.get("strong_after_queries"),
            v.get("tier", "-"),
        ]
        for k, v in demo["accounts"].items()
    ]
    return table(["account", "queries", "suspected", "after queries", "strong after", "tier"], rows)


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


def _cluster_section(cluster: dict) -> list[str]:
    rows = []
    for name in ("single", "cluster"):
        total = cluster[name]["locust"].get("all", {})
        rows.append([name, total.get("requests_per_s"), total.get("p50_ms"), total.get("failures")])
    out = table(["deployment", "requests/s", "p50 ms", "failures"], rows)
    checks = [[k, v] for k, v in cluster["checks"].items()]
    return out + table(["check", "passed"], checks)


SECTIONS: dict[str, tuple[str, Callable[[dict], list[str]]]] = {
    "demo": ("Demo: accounts", _demo_section),
    "evaluation": ("Per-query evaluation", _evaluation_section),
    "accounts": ("Account-level evaluation", _accounts_section),
    "recipes": ("Shadow recipes: per-query AUROC", _recipes_section),
    "clone_spread": (
        "Clone accuracy: the spread of the training run",
        lambda r: clone_spread.markdown_lines(r)[2:],
    ),
    "bench": ("Serving cost", cost.bench_lines),
    "variants": (
        "Reconstructor candidates: CPU cost against per-query AUROC",
        lambda v: cost.variants_lines(v) + cost.designs_lines(v),
    ),
    "cluster": ("Two replicas behind nginx (docs/deployment.md)", _cluster_section),
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


def _splice(text: str, begin: str, end: str, lines: list[str]) -> str:
    if begin not in text or end not in text:
        raise ValueError(f"README has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n" + "\n".join(lines) + end + tail


def splice_readme(readme: str, reports: dict[str, dict]) -> str:
    """``readme`` with the headline table and the cost block rewritten between their markers."""
    readme = _splice(readme, BEGIN, END, headline(reports))
    return _splice(readme, cost.COST_BEGIN, cost.COST_END, cost.cost_block(reports))


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
