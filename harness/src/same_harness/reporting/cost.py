"""What the defense costs, from ``reports/bench.json`` and ``reports/variants.json``.

The README's cost block (rewritten by ``make docs`` between its own markers) and the results
page's section both come from here: the served throughput and p99 ratios against the goals
(conv victim, through the gateway, ResNet-18 victim), the best point measured, and the
cost-against-quality table of the reconstructor candidates.
"""

from __future__ import annotations

from .markdown import cell, table

COST_BEGIN, COST_END = "<!-- cost:begin (make docs) -->", "<!-- cost:end -->"
THROUGHPUT_GOAL, P99_GOAL = 0.5, 2.0


def _goal(bench: dict, batch: str, key: str) -> float | None:
    return bench.get("goals", {}).get(batch, {}).get(key)


def bench_lines(bench: dict) -> list[str]:
    """Per batch size: images/s at saturation and the two ratios, conv and ResNet-18 victim."""
    resnet = bench.get("resnet18", {})
    rows = []
    for batch, sat in bench.get("saturation", {}).items():
        if batch not in bench.get("goals", {}):
            continue  # "peak", "compute_floor"
        rows.append(
            [
                batch,
                cell(sat.get("same_images_per_s"), 0),
                cell(sat.get("gateway_same_images_per_s"), 0),
                cell(sat.get("victim_images_per_s"), 0),
                cell(_goal(bench, batch, "throughput_ratio_at_saturation")),
                cell(_goal(bench, batch, "p99_ratio_at_concurrency_16"), 2),
                cell(_goal(resnet, batch, "throughput_ratio_at_saturation")),
                cell(_goal(resnet, batch, "p99_ratio_at_concurrency_16"), 2),
            ]
        )
    header = [
        "batch",
        "`same` img/s",
        "through gateway",
        "`victim` img/s",
        f"same/victim (goal >= {THROUGHPUT_GOAL})",
        f"p99 ratio c16 (goal <= {P99_GOAL})",
        "ResNet-18: same/victim",
        "ResNet-18: p99 ratio",
    ]
    return table(header, rows)


def _worst_auroc_change(row: dict, base: dict) -> tuple[float, str]:
    changes = {a: row["auroc"][a] - base[a] for a in base}
    attack = min(changes, key=changes.get)
    return changes[attack], attack


def delays(row: dict) -> str:
    """A variants row's detection delays per attack, ``-`` where the account was not suspected."""
    values = (row.get("detection_delay") or {}).values()
    return " / ".join("-" if d is None else str(d) for d in values) or "-"


def variants_lines(variants: dict) -> list[str]:
    """Each candidate's CPU cost against the float32 graph's and its worst AUROC change."""
    rows_in = variants.get("rows", [])
    if not rows_in:
        return []
    baseline = next(r for r in rows_in if r["name"] == variants.get("baseline", "float32"))
    base_us = baseline["reconstructor_us"]["batch64"]
    tolerance = variants.get("auroc_tolerance", 0.005)
    rows = []
    for r in rows_in:
        change, attack = _worst_auroc_change(r, baseline["auroc"])
        chosen = " (chosen)" if r["name"] == variants.get("chosen") else ""
        rows.append(
            [
                f"{r['name']}{chosen}",
                cell(r["reconstructor_us"]["batch64"], 0),
                cell(r["reconstructor_us"]["batch64"] / base_us, 2),
                cell(r["victim_share"], 2),
                f"{change:+.4f} ({attack})",
                cell(change >= -tolerance),
                delays(r),
            ]
        )
    header = [
        "reconstructor",
        "CPU µs/img b64",
        f"x {baseline['name']}",
        "victim share",
        f"worst AUROC change vs {baseline['name']}",
        f"within {tolerance}",
        "queries to suspicion, per attack",
    ]
    return table(header, rows)


def designs_lines(variants: dict) -> list[str]:
    """Designs trained more than once: mean and worst AUROC per attack over their runs."""
    designs = variants.get("designs", {})
    if not designs:
        return []
    attacks = list(next(iter(designs.values()))["auroc_mean"])
    rows = [
        [
            name,
            len(d["runs"]),
            cell(d["us_batch64_mean"], 0),
            *(f"{d['auroc_mean'][a]:.3f} / {d['auroc_min'][a]:.3f}" for a in attacks),
        ]
        for name, d in designs.items()
    ]
    header = ["design", "training runs", "CPU µs/img b64", *(f"{a} mean / worst" for a in attacks)]
    return table(header, rows)


def best_point_lines(bench: dict) -> list[str]:
    """One sentence: the best measured ratios and whether the goals were met."""
    goals = bench.get("goals", {})
    if not goals:
        return []
    ratio = {b: g.get("throughput_ratio_at_saturation") or 0.0 for b, g in goals.items()}
    p99 = {b: g.get("p99_ratio_at_concurrency_16") or float("inf") for b, g in goals.items()}
    best_t, best_p = max(ratio, key=ratio.get), min(p99, key=p99.get)
    met = all(g.get("throughput_goal_met") and g.get("p99_goal_met") for g in goals.values())
    return [
        f"Best measured point (conv victim, CPU): same/victim {ratio[best_t]:.3f} at batch "
        f"{best_t}, p99 ratio {p99[best_p]:.2f} at batch {best_p}; goals "
        f"{'met' if met else 'not met'} (>= {THROUGHPUT_GOAL} and <= {P99_GOAL} at batch 8 "
        "and 64).",
        "",
    ]


def cost_block(reports: dict[str, dict]) -> list[str]:
    """The README's cost block: best point, served ratios, reconstructor trade-offs."""
    bench, variants = reports.get("bench"), reports.get("variants")
    if not bench and not variants:
        return ["No cost reports yet: run `make bench` and `make variants`, then `make docs`.", ""]
    out: list[str] = []
    if bench:
        out += best_point_lines(bench)
        out += [f"`make bench` ({bench.get('_written', '?')}), at saturation:", ""]
        out += bench_lines(bench)
    if variants:
        out += [f"`make variants` ({variants.get('_written', '?')}), one thread:", ""]
        out += variants_lines(variants)
        if variants.get("designs"):
            out += ["The same designs over several training runs (seed only):", ""]
            out += designs_lines(variants)
    return out
