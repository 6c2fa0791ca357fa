"""One measured distributed Locust run against a deployment, and what it cost.

Per run: Locust's figures per class (images/s added), requests per gateway and per Triton,
CPU seconds per component, Redis commands; from them the unit costs a deployment is sized
from, and the cluster/single ratios.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import psutil

from same_defense.accounts import RedisStore

from ..load.distributed import DistributedRun, LoadSettings
from ..load.stats import ratio
from .replicas import Cluster

CLASSES = {"benign": "benign", "attacker-synthetic": "synthetic", "attacker-proxy": "proxy"}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their children (Triton's stubs)."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in (proc, *proc.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def cpu_snapshot(components: dict[str, list[int]]) -> dict[str, float]:
    return {name: cpu_seconds(pids) for name, pids in components.items()}


def redis_commands(url: str) -> int:
    return int(RedisStore(url).client.info("stats")["total_commands_processed"])


def triton_requests(metrics_url: str, model: str = "same") -> float:
    """Successful requests of ``model`` since that server started (0 when it is down)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    prefix = f'nv_inference_request_success{{model="{model}"'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def images_per_request(settings: LoadSettings) -> dict[str, int]:
    batch = settings.attack_batch
    return {"benign": 1, "attacker-synthetic": batch, "attacker-proxy": batch}


def summarise_run(stats: dict[str, dict], settings: LoadSettings) -> dict:
    sizes = images_per_request(settings)
    out: dict = {}
    images_per_s = 0.0
    for name, row in stats.items():
        key = "all" if name == "Aggregated" else name
        out[key] = dict(row)
        if name in sizes and row.get("requests_per_s") is not None:
            out[key]["images_per_s"] = round(row["requests_per_s"] * sizes[name], 2)
            images_per_s += out[key]["images_per_s"]
    out["images_per_s"] = round(images_per_s, 2)
    return out


def measured_run(
    cluster: Cluster,
    settings: LoadSettings,
    data_file: Path,
    locust_keys: Path,
    prefix: Path,
    during=None,
) -> dict:
    """One distributed Locust run against ``cluster.url``; ``during(t0)`` runs alongside."""
    components = cluster.pids()
    cpu_before = cpu_snapshot(components)
    commands_before = redis_commands(cluster.redis.url)
    gateway_before = cluster.requests_per_gateway()
    triton_before = [triton_requests(s.metrics_url) for s in cluster.servers]
    run = DistributedRun(settings, cluster.url, data_file, locust_keys, prefix).start()
    t0 = time.monotonic()
    extra = None
    worker = None
    if during is not None:
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(during(t0)), daemon=True)
        worker.start()
    code = run.wait()
    wall = time.monotonic() - t0
    if worker is not None:
        worker.join(300)
        extra = result
    summary = summarise_run(run.stats(), settings)
    out = {
        "locust_exit_code": code,
        "workers_connected": run.workers_seen(),
        "workers_killed_after_run": run.workers_killed,
        "wall_s": round(wall, 1),
        "locust": summary,
        "redis_commands": redis_commands(cluster.redis.url) - commands_before,
    }
    if during is None:  # counters and CPU totals hold only when no process was replaced
        out["requests_per_gateway"] = [
            round(a - b)
            for a, b in zip(cluster.requests_per_gateway(), gateway_before, strict=True)
        ]
        out["requests_per_triton"] = [
            round(triton_requests(s.metrics_url) - b)
            for s, b in zip(cluster.servers, triton_before, strict=True)
        ]
        cpu_after = cpu_snapshot(components)
        out["cpu_s"] = {k: round(cpu_after[k] - cpu_before[k], 2) for k in components}
        out["cost"] = unit_costs(out, summary, settings)
    if extra is not None:
        out["faults"] = extra
    return out


def unit_costs(run: dict, summary: dict, settings: LoadSettings) -> dict:
    """CPU per image (Triton) and per request (gateway, nginx), Redis commands per request:
    the figures a deployment is sized from (CPU of every process of the component over the
    whole run, idle moments included, so slightly pessimistic)."""
    requests = (summary.get("all") or {}).get("requests") or 0
    images = sum(
        (summary.get(name) or {}).get("requests", 0) * size
        for name, size in images_per_request(settings).items()
    )
    cpu = run["cpu_s"]
    out = {"requests": requests, "images": round(images)}
    if images:
        out["triton_cpu_ms_per_image"] = round(1e3 * cpu["triton"] / images, 3)
    if requests:
        out["gateway_cpu_ms_per_request"] = round(1e3 * cpu["gateway"] / requests, 3)
        if "nginx" in cpu:
            out["nginx_cpu_ms_per_request"] = round(1e3 * cpu["nginx"] / requests, 3)
        out["redis_commands_per_request"] = round(run["redis_commands"] / requests, 2)
        out["redis_cpu_ms_per_request"] = round(1e3 * cpu["redis"] / requests, 3)
    return out


def compare(single: dict, cluster: dict) -> dict:
    out = {
        "images_per_s": ratio(cluster["locust"]["images_per_s"], single["locust"]["images_per_s"])
    }
    for name in ("all", *CLASSES):
        a, b = cluster["locust"].get(name), single["locust"].get(name)
        if a and b:
            out[name] = {
                k: ratio(a.get(k), b.get(k))
                for k in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms")
            }
    return out
