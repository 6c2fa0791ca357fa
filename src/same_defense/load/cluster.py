"""``make cluster``: the replicated deployment on one machine, measured against the single one.

In one run, with the same distributed Locust settings (a master and two workers, benign and
attacker users, one API key per simulated user):

1. **single**: one Triton + one gateway (+ Redis), Locust straight at the gateway;
2. **cluster**: two Tritons + two gateway processes sharing Redis, nginx in front of each tier
   (see :mod:`same_defense.load.replicas`), Locust at nginx;
3. **cross-path**: a thief suspected through gateway 0 is answered with the policy through
   gateway 1 (state in Redis);
4. **faults**, under load: SIGKILL one Triton and, later, one gateway; both are restarted on
   their ports and must serve again; honest requests must not fail (nginx moves calls to the
   survivors within its retry budget) and the thief stays suspected;
5. **Redis outage**: Redis frozen for a few seconds, probed through both gateways, with the
   default ``--on-store-error closed`` and again with ``open``.

Writes ``reports/cluster.json`` (and Locust's CSV/HTML/logs under ``reports/cluster/``); exits
non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import psutil

from ..accounts import KeyStore, RedisStore
from .cluster_checks import HonestClients, cross_path, outage_holds, redis_outage
from .common import ensure_repository, exit_on_sigterm, load_test_data
from .distributed import DistributedRun, LoadSettings
from .replicas import Cluster
from .stats import ratio

KEY_KINDS = ("benign", "synthetic", "proxy")
CLASSES = {"benign": "benign", "attacker-synthetic": "synthetic", "attacker-proxy": "proxy"}


# Accounts -------------------------------------------------------------------------------


def provision_keys(workdir: Path, users: int) -> tuple[Path, Path, dict[str, str]]:
    """The gateways' key file, Locust's keys file (one account per simulated user and class)
    and the keys of the probe accounts (``probe``, ``honest``, ``thief``)."""
    store = KeyStore(workdir / "keys.json")
    locust_keys = workdir / "locust-keys.json"
    keys = {kind: [store.add(f"{kind}-{i}") for i in range(users)] for kind in KEY_KINDS}
    locust_keys.write_text(json.dumps(keys))
    probes = {name: store.add(name) for name in ("probe", "honest", "thief")}
    return store.path, locust_keys, probes


# Measurements ---------------------------------------------------------------------------


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


# Faults ---------------------------------------------------------------------------------


def fault_schedule(
    cluster: Cluster,
    kill_triton_at: float,
    kill_gateway_at: float,
    down_s: float,
    honest: HonestClients,
):
    """What runs alongside the fault run: the kills, restarts, a timeline of who served, and
    honest clients that retry as ``SameClient`` does."""

    def run(t0: float) -> dict:
        honest.start()
        events: list[dict] = []
        timeline: list[list[float]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                row = [round(time.monotonic() - t0, 1)]
                row += cluster.requests_per_gateway()
                row += [triton_requests(s.metrics_url) for s in cluster.servers]
                timeline.append(row)
                stop.wait(2.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def at(t: float) -> None:
            time.sleep(max(0.0, t0 + t - time.monotonic()))

        def event(what: str, **extra) -> None:
            events.append({"t_s": round(time.monotonic() - t0, 1), "event": what, **extra})

        at(kill_triton_at)
        cluster.kill_triton(0)
        event("SIGKILL triton 0 (server and stubs)")
        time.sleep(down_s)
        event("restart triton 0", ready_after_s=round(cluster.restart_triton(0), 1))
        at(kill_gateway_at)
        cluster.kill_gateway(0)
        event("SIGKILL gateway 0")
        time.sleep(down_s)
        event("restart gateway 0", ready_after_s=round(cluster.restart_gateway(0), 1))
        time.sleep(8.0)  # let the restarted ones take traffic before the run ends
        stop.set()
        sampler.join(10)
        return {
            "honest_clients_with_retries": honest.stop(),
            "events": events,
            "timeline_columns": ["t_s"]
            + [f"gateway_{i}_requests" for i in range(len(cluster.replicas))]
            + [f"triton_{i}_requests_since_start" for i in range(len(cluster.servers))],
            "timeline": timeline,
        }

    return run


def rejoined(faults: dict) -> dict:
    """Did the restarted Triton 0 and gateway 0 serve after their restarts? (their counters
    start at 0 again, so any growth after the restart event is their traffic)."""
    ev = {e["event"]: e["t_s"] for e in faults["events"]}
    rows = faults["timeline"]
    n_gw = sum(c.startswith("gateway_") for c in faults["timeline_columns"])

    def grew(col: int, after: float) -> bool:
        values = [r[col] for r in rows if r[0] > after]
        return len(values) >= 2 and values[-1] > values[0]

    return {
        "triton_0_served_after_restart": grew(1 + n_gw, ev["restart triton 0"]),
        "gateway_0_served_after_restart": grew(1, ev["restart gateway 0"]),
    }


# Main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--report", type=Path, default=Path("reports/cluster.json"))
    p.add_argument("--out", type=Path, default=Path("reports/cluster"), help="Locust files")
    p.add_argument("--users", type=int, default=12)
    p.add_argument("--spawn-rate", type=float, default=4.0)
    p.add_argument("--run-time", type=int, default=60, help="seconds per measured run")
    p.add_argument("--fault-run-time", type=int, default=100, help="seconds of the fault run")
    p.add_argument("--workers", type=int, default=2, help="Locust worker processes")
    p.add_argument("--outage", type=float, default=5.0, help="seconds Redis is frozen")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = ensure_repository(args.repository)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="same-cluster-"))
    data = load_test_data(manifest)
    data_file = workdir / "data.npz"
    np.savez(data_file, **data)
    keys_file, locust_keys, probes = provision_keys(workdir, args.users)
    settings = LoadSettings(
        users=args.users, spawn_rate=args.spawn_rate, run_time_s=args.run_time,
        workers=args.workers, repository=args.repository,
    )  # fmt: skip
    report: dict = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
    }

    def deployment(name: str, **kw) -> Cluster:
        return Cluster(args.repository, workdir / name, keys_file, probes["probe"], **kw)

    try:
        print("== single: 1 Triton + 1 gateway (+ Redis), distributed Locust", flush=True)
        with deployment("single", tritons=1, gateways=1, balanced=False) as single:
            report["single"] = measured_run(
                single, settings, data_file, locust_keys, args.out / "single"
            )
        print("== cluster: 2 Tritons + 2 gateways + Redis behind nginx", flush=True)
        with deployment("cluster", tritons=2, gateways=2) as cluster:
            report["cluster"] = measured_run(
                cluster, settings, data_file, locust_keys, args.out / "cluster"
            )
            report["cluster_vs_single"] = compare(report["single"], report["cluster"])
            print("== cross-path: thief via gateway 0, answers via gateway 1", flush=True)
            report["cross_path"] = cross_path(
                cluster, "thief", probes["thief"], probes["honest"],
                data["synthetic"], data["benign"][:64],
            )  # fmt: skip
            print("== faults under load: kill a Triton, then a gateway", flush=True)
            third = args.fault_run_time / 4
            faults = measured_run(
                cluster, replace(settings, run_time_s=args.fault_run_time), data_file,
                locust_keys, args.out / "faults",
                during=fault_schedule(
                    cluster, third, 2.2 * third, down_s=2.0,
                    honest=HonestClients(cluster.url, probes["honest"], data["benign"][:200]),
                ),
            )  # fmt: skip
            faults["rejoined"] = rejoined(faults["faults"])
            faults["thief_still_suspected"] = (
                RedisStore(cluster.redis.url).get("thief").suspected_at_query > 0
            )
            faults["nginx_upstream_log_lines"] = len(cluster.balancer.upstream_errors())
            report["faults"] = faults
            print("== Redis frozen: fail closed, then fail open", flush=True)
            images = data["benign"][:4]
            outages = {"closed": redis_outage(cluster, probes["honest"], images, args.outage)}
            cluster.restart_gateways("open")
            outages["open"] = redis_outage(cluster, probes["honest"], images, args.outage)
            outages["thief_suspected_after"] = (
                RedisStore(cluster.redis.url).get("thief").suspected_at_query > 0
            )
            report["redis_outage"] = outages
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["checks"] = checks(report)
    report["passed"] = all(report["checks"].values())
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(headline(report))
    return 0 if report["passed"] else 1


def checks(report: dict) -> dict[str, bool]:
    cluster, faults = report["cluster"], report["faults"]
    return {
        "no_failures_single": (report["single"]["locust"]["all"] or {}).get("failures") == 0,
        "no_failures_cluster": (cluster["locust"]["all"] or {}).get("failures") == 0,
        "both_workers_connected": cluster["workers_connected"] == report["settings"]["workers"],
        "both_gateways_served": all(n > 0 for n in cluster["requests_per_gateway"]),
        "both_tritons_served": all(n > 0 for n in cluster["requests_per_triton"]),
        "cross_path": report["cross_path"]["passed"],
        # Clients that retry (SameClient) lose nothing; Locust's users do not retry, so a call
        # in flight inside a killed process fails: at most one per user and kill.
        "no_honest_request_lost_with_client_retries": (
            faults["faults"]["honest_clients_with_retries"]["failed"] == 0
            and faults["faults"]["honest_clients_with_retries"]["calls"] > 0
        ),
        "locust_failures_only_calls_in_flight_at_kills": (faults["locust"]["all"] or {}).get(
            "failures", 0
        )
        <= 2 * report["settings"]["users"],
        "killed_processes_rejoined": all(faults["rejoined"].values()),
        "account_state_survived_faults": faults["thief_still_suspected"],
        "redis_outage_fail_closed": outage_holds(report["redis_outage"]["closed"]),
        "redis_outage_fail_open": outage_holds(report["redis_outage"]["open"]),
        "account_state_survived_outage": report["redis_outage"]["thief_suspected_after"],
    }


def headline(report: dict) -> str:
    s, c = report["single"]["locust"], report["cluster"]["locust"]
    p50 = [(x.get("benign") or {}).get("p50_ms") for x in (c, s)]
    failed = [k for k, ok in report["checks"].items() if not ok]
    return (
        f"== cluster: {c['images_per_s']} images/s vs single {s['images_per_s']} "
        f"(benign p50 {p50[0]} vs {p50[1]} ms); "
        f"faults: {report['faults']['locust']['all']['failures']} failed requests, benign "
        f"{(report['faults']['locust'].get('benign') or {}).get('failures')}; "
        + ("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    )


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
