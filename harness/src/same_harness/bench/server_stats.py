"""One bench cell with its accounting: CPU seconds of server and client, Triton's counters.

CPU time per image is the cost; wall-clock throughput is the cost plus contention with other
tenants of a shared machine. Triton's per-model statistics say how the server ran the cell:
images per execution (what dynamic batching achieved), time queued and computing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from .closed_loop import Worker, closed_loop


def cpu_seconds(pids: list[int], children: bool = True) -> float:
    """User + system CPU seconds of these processes (and their children), so far."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *(root.children(recursive=True) if children else [])]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def server_counters(url: str) -> dict[str, dict[str, int]]:
    """Triton's cumulative per-model statistics: requests, executions, images, and the
    nanoseconds spent queued and computing (input + infer + output)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
    out = {}
    for m in stats:
        s = m.get("inference_stats", {})

        def ns(key: str, s: dict = s) -> int:
            return int(s.get(key, {}).get("ns", 0))

        out[m["name"]] = {
            "requests": int(s.get("success", {}).get("count", 0)),
            "executions": int(m.get("execution_count", 0)),
            "images": int(m.get("inference_count", 0)),
            "request_ns": ns("success"),
            "queue_ns": ns("queue"),
            "compute_ns": ns("compute_input") + ns("compute_infer") + ns("compute_output"),
        }
    return out


def server_breakdown(before: dict, after: dict) -> dict:
    """Per model, over one cell: mean images per execution (what dynamic batching achieved)
    and the mean milliseconds a request spent in the server, queued and computing."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        d = {k: v - b.get(k, 0) for k, v in a.items()}
        if d["requests"] <= 0:
            continue
        out[name] = {
            "requests": d["requests"],
            "images_per_execution": round(d["images"] / max(1, d["executions"]), 2),
            "server_ms_per_request": round(d["request_ns"] / d["requests"] / 1e6, 3),
            "queue_ms_per_request": round(d["queue_ns"] / d["requests"] / 1e6, 3),
            "compute_ms_per_request": round(d["compute_ns"] / d["requests"] / 1e6, 3),
        }
    return out


def measure_cell(
    make_worker: Callable[[], Worker],
    batches: list[np.ndarray],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    url: str | None = None,
    server_pids: list[int] | None = None,
    gateway_pid: int | None = None,
) -> dict:
    """One closed-loop cell plus CPU accounting and, for a served target, Triton's own
    per-model breakdown. ``gateway_pid``: the gateway process this target goes through, whose
    own CPU per request is reported apart (``gateway_cpu_ms_per_request``)."""
    server_pids = server_pids or []
    before = server_counters(url) if url else None
    gateway = [gateway_pid] if gateway_pid else []
    cpu0 = (
        cpu_seconds(server_pids),
        cpu_seconds([os.getpid()], children=False),
        cpu_seconds(gateway, children=False),
    )
    r = closed_loop(make_worker, batches, concurrency, warmup_s, duration_s)
    cpu1 = (
        cpu_seconds(server_pids),
        cpu_seconds([os.getpid()], children=False),
        cpu_seconds(gateway, children=False),
    )
    # CPU time per image is far less sensitive to other tenants than wall-clock throughput:
    # it is the cost, where throughput is the cost plus contention.
    sent = max(1, r.pop("images_sent"))
    r["cpu_ms_per_image"] = {
        "server": round((cpu1[0] - cpu0[0]) * 1e3 / sent, 4),
        "client": round((cpu1[1] - cpu0[1]) * 1e3 / sent, 4),
    }
    if gateway_pid:
        # Per request, not per image: an authenticating proxy's work is per call.
        requests = max(1, sent // len(batches[0]))
        r["gateway_cpu_ms_per_request"] = round((cpu1[2] - cpu0[2]) * 1e3 / requests, 4)
    if before is not None:
        # Includes the warm-up: it describes how the server ran, not just the window. The
        # pause lets Triton finish accounting for the last requests before the next cell.
        time.sleep(0.2)
        r["server"] = server_breakdown(before, server_counters(url))
    return r
