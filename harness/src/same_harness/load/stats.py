"""Pure functions shared by the benchmark and the load-test summary."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PERCENTILES = (50, 95, 99)


def latency_summary(latencies_s: Sequence[float], elapsed_s: float, batch_size: int) -> dict:
    """Throughput and latency percentiles of one closed-loop run.

    ``latencies_s`` holds one entry per completed request (seconds); ``elapsed_s`` is the
    measured window. Percentiles are reported in milliseconds, throughput in images and
    requests per second.
    """
    if elapsed_s <= 0:
        raise ValueError(f"elapsed time must be positive, got {elapsed_s}")
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    requests = int(ms.size)
    summary = {
        "requests": requests,
        "images": requests * batch_size,
        "elapsed_s": round(elapsed_s, 3),
        "requests_per_s": round(requests / elapsed_s, 2),
        "images_per_s": round(requests * batch_size / elapsed_s, 2),
    }
    for q in PERCENTILES:
        summary[f"p{q}_ms"] = round(float(np.percentile(ms, q)), 3) if requests else None
    summary["mean_ms"] = round(float(ms.mean()), 3) if requests else None
    return summary


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """``numerator / denominator`` rounded, or None when either side is missing or zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    return round(value, digits) if math.isfinite(value) else None


def cost_breakdown(
    served_same_us: float, served_victim_us: float, local_same_us: float, local_victim_us: float
) -> dict:
    """Split what ``same`` costs per image over ``victim`` into compute and serving overhead.

    Arguments are costs per image in microseconds (wall time, or CPU time). The extra cost of
    the served ensemble is ``served_same - served_victim``; the part the extra graph itself
    costs is what it costs in-process, ``local_same - local_victim``; the rest is serving
    overhead (two more backend calls, the ensemble, the Python defense step, more bytes).
    """
    if min(served_same_us, served_victim_us, local_same_us, local_victim_us) <= 0:
        raise ValueError("costs must be positive")
    extra = served_same_us - served_victim_us
    compute = local_same_us - local_victim_us
    share = compute / extra if extra > 0 else None
    return {
        "extra_us_per_image": round(extra, 1),
        "compute_us_per_image": round(compute, 1),
        "serving_overhead_us_per_image": round(extra - compute, 1),
        "compute_share_of_gap": round(share, 3) if share is not None else None,
    }


def gap_breakdown(
    served_same: float, served_victim: float, local_same: float, local_victim: float
) -> dict:
    """:func:`cost_breakdown` from throughputs in images/s (wall time per image)."""
    if min(served_same, served_victim, local_same, local_victim) <= 0:
        raise ValueError("throughputs must be positive")
    return cost_breakdown(
        1e6 / served_same, 1e6 / served_victim, 1e6 / local_same, 1e6 / local_victim
    )


# Columns of Locust's ``<prefix>_stats.csv`` that the summary keeps (names as Locust writes them).
_LOCUST_COLUMNS = {
    "requests": "Request Count",
    "failures": "Failure Count",
    "requests_per_s": "Requests/s",
    "failures_per_s": "Failures/s",
    "p50_ms": "50%",
    "p95_ms": "95%",
    "p99_ms": "99%",
    "mean_ms": "Average Response Time",
    "max_ms": "Max Response Time",
}


def _number(text: str) -> float | int | None:
    if text in ("", "N/A"):
        return None
    value = float(text)
    return int(value) if value.is_integer() else round(value, 3)


def read_locust_stats(path: Path) -> dict[str, dict]:
    """``{request name: figures}`` from a Locust ``_stats.csv`` (the Aggregated row included)."""
    rows: dict[str, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = {key: _number(row[col]) for key, col in _LOCUST_COLUMNS.items()}
    return rows
