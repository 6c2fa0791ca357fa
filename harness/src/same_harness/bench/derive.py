"""What the bench derives from its cells: ratios, added latency, saturation, goals, the table."""

from __future__ import annotations

from collections.abc import Callable

from ..load.stats import cost_breakdown, gap_breakdown, ratio
from .targets import IN_PROCESS, TARGETS


def _latency_difference(x: dict, y: dict) -> dict:
    return {"p50": round(x["p50_ms"] - y["p50_ms"], 3), "p99": round(x["p99_ms"] - y["p99_ms"], 3)}


def _ratios(x: dict, y: dict) -> dict:
    return {
        "throughput": ratio(x["images_per_s"], y["images_per_s"]),
        "p50": ratio(x["p50_ms"], y["p50_ms"]),
        "p99": ratio(x["p99_ms"], y["p99_ms"]),
    }


def _per_cell(
    cell: Callable, pairs: dict, batch_sizes: list[int], concurrency: list[int], compare: Callable
) -> dict:
    """``{label: {batch: {concurrency: compare(numerator cell, denominator cell)}}}`` for the
    cells both targets of a pair measured."""
    out: dict = {}
    for label, (num, den) in pairs.items():
        for b in batch_sizes:
            for c in concurrency:
                x, y = cell(num, b, c), cell(den, b, c)
                if x and y:
                    out.setdefault(label, {}).setdefault(str(b), {})[str(c)] = compare(x, y)
    return out


def derive(
    results: dict, batch_sizes: list[int], concurrency: list[int], server_cpu: bool = True
) -> dict:
    """Ratios per cell; per batch size (and ``peak``, over all of them) the best throughput
    over the concurrency levels, the same/victim ratio there and the gap breakdown."""

    def cell(target: str, b: int, c: int) -> dict | None:
        return results.get(target, {}).get(str(b), {}).get(str(c))

    pairs = {
        "same/victim": ("same", "victim"),
        "same/inprocess_same": ("same", "inprocess_same"),
        "victim/inprocess_victim": ("victim", "inprocess_victim"),
        "gateway_same/same": ("gateway_same", "same"),
    }
    # Added latency, in ms, per cell: what the defense adds over the bare victim (both on
    # Triton directly), everything the public endpoint adds, the gateway's own
    # share (keys only vs Triton directly) and the account layer's (account defense on vs
    # off, both through a gateway).
    added = {
        "same_over_victim": ("same", "victim"),
        "gateway_total": ("gateway_same", "same"),
        "gateway": ("gateway_same_keys_only", "same"),
        "account_layer": ("gateway_same", "gateway_same_keys_only"),
    }
    added_ms = _per_cell(cell, added, batch_sizes, concurrency, _latency_difference)
    ratios = _per_cell(cell, pairs, batch_sizes, concurrency, _ratios)

    def cells_of(target: str, sizes: list[int]) -> list[dict]:
        return [x for b in sizes for c in concurrency if (x := cell(target, b, c))]

    def cpu_us(x: dict) -> float:  # what one image cost this machine, client included
        return (x["cpu_ms_per_image"]["server"] + x["cpu_ms_per_image"]["client"]) * 1e3

    def best(target: str, sizes: list[int]) -> dict | None:
        cells = cells_of(target, sizes)
        return max(cells, key=lambda x: x["images_per_s"]) if cells else None

    # The compute floor: the cheapest the graphs ran in-process, at any batch size. What the
    # served ensemble costs beyond it is serving (transport, ensemble, Python steps, and
    # batches that dynamic batching could not make as efficient). Wall time per image is
    # what throughput sees; CPU time per image is the same split, far less disturbed by
    # other tenants of a shared machine.
    floor_wall = {t: best(t, batch_sizes) for t in IN_PROCESS}
    floor_cpu = {
        t: min((cpu_us(x) for x in cells_of(t, batch_sizes)), default=None) for t in IN_PROCESS
    }
    saturation: dict = {}
    for b in [*batch_sizes, "peak"]:
        sizes = batch_sizes if b == "peak" else [b]
        top = {t: best(t, sizes) for t in TARGETS}
        entry: dict = {f"{t}_images_per_s": x["images_per_s"] for t, x in top.items() if x}
        same, victim = top["same"], top["victim"]
        if same and victim:
            entry["same/victim"] = ratio(same["images_per_s"], victim["images_per_s"])
            local_same, local_victim = floor_wall["inprocess_same"], floor_wall["inprocess_victim"]
            if local_same and local_victim:
                entry["gap_wall"] = gap_breakdown(
                    same["images_per_s"],
                    victim["images_per_s"],
                    local_same["images_per_s"],
                    local_victim["images_per_s"],
                )
            if server_cpu and floor_cpu["inprocess_same"] and floor_cpu["inprocess_victim"]:
                entry["gap_cpu"] = cost_breakdown(
                    cpu_us(same),
                    cpu_us(victim),
                    floor_cpu["inprocess_same"],
                    floor_cpu["inprocess_victim"],
                )
        saturation[str(b)] = entry
    saturation["compute_floor"] = {
        t: {
            "images_per_s": floor_wall[t]["images_per_s"] if floor_wall[t] else None,
            "cpu_us_per_image": round(floor_cpu[t], 1) if floor_cpu[t] else None,
        }
        for t in IN_PROCESS
    }
    return {
        "ratios": ratios,
        "added_latency_ms": added_ms,
        "saturation": saturation,
        "batch1": batch1(results, added_ms),
    }


# Issue 20's bounds for one image at a time, one client: what an honest user feels.
SAME_ADDED_P50_MS = 1.0  # `same` over the bare victim, both on Triton directly
GATEWAY_ADDED_P50_MS = 0.5  # the gateway (with the account layer) over `same` directly
GATEWAY_CPU_MS_PER_REQUEST = 0.5


def batch1(results: dict, added_ms: dict) -> dict:
    """Batch 1, concurrency 1: the added p50 latency of ``same`` over ``victim`` and of the
    gateway over ``same``, and the gateway's own CPU per request, against issue 20's bounds.
    Absent figures (a target not measured) are None, their goal not met."""

    def added(label: str) -> float | None:
        return added_ms.get(label, {}).get("1", {}).get("1", {}).get("p50")

    def gateway_cpu(target: str) -> float | None:
        return results.get(target, {}).get("1", {}).get("1", {}).get("gateway_cpu_ms_per_request")

    out = {
        "same_added_p50_ms": added("same_over_victim"),
        "gateway_added_p50_ms": added("gateway_total"),
        "gateway_keys_only_added_p50_ms": added("gateway"),
        "gateway_cpu_ms_per_request": gateway_cpu("gateway_same"),
        "gateway_keys_only_cpu_ms_per_request": gateway_cpu("gateway_same_keys_only"),
    }
    bounds = {
        "same_added_p50_ms": SAME_ADDED_P50_MS,
        "gateway_added_p50_ms": GATEWAY_ADDED_P50_MS,
        "gateway_cpu_ms_per_request": GATEWAY_CPU_MS_PER_REQUEST,
    }
    out["goals_met"] = {k: out[k] is not None and out[k] <= bound for k, bound in bounds.items()}
    out["bounds"] = bounds
    return out


def goals(results: dict, derived: dict, batch_sizes: list[int], concurrency: list[int]) -> dict:
    """The issue's targets, per batch size: throughput ratio at saturation >= 0.5 and
    p99 ratio at the highest concurrency <= 2."""
    top = str(max(concurrency))
    out = {}
    for b in batch_sizes:
        sat = derived["saturation"].get(str(b), {}).get("same/victim")
        p99 = derived["ratios"].get("same/victim", {}).get(str(b), {}).get(top, {}).get("p99")
        out[str(b)] = {
            "throughput_ratio_at_saturation": sat,
            "throughput_goal_met": sat is not None and sat >= 0.5,
            f"p99_ratio_at_concurrency_{top}": p99,
            "p99_goal_met": p99 is not None and p99 <= 2.0,
        }
    return out


def format_table(results: dict) -> str:
    lines = [
        "| target | batch | concurrency | images/s | requests/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target, by_batch in results.items():
        for b, by_conc in by_batch.items():
            for c, r in by_conc.items():
                lines.append(
                    f"| {target} | {b} | {c} | {r['images_per_s']:.1f} | "
                    f"{r['requests_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
                )
    return "\n".join(lines)
