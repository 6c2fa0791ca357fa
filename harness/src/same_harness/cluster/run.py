"""``make cluster``: the replicated deployment on one machine, measured against the single one.

In one run, with the same distributed Locust settings (a master and two workers, benign and
attacker users, one API key per simulated user):

1. **single**: one Triton + one gateway (+ Redis), Locust straight at the gateway;
2. **cluster**: two Tritons + two gateway processes sharing Redis, nginx in front of each tier
   (see :mod:`same_harness.cluster.replicas`), Locust at nginx;
3. **cross-path**: a thief suspected through gateway 0 is answered with the policy through
   gateway 1 (state in Redis);
4. **faults**, under load: SIGKILL one Triton and, later, one gateway; both are restarted on
   their ports and must serve again; honest requests must not fail (nginx moves calls to the
   survivors within its retry budget) and the thief stays suspected;
5. **Redis outage**: Redis frozen for a few seconds, probed through both gateways, with the
   default ``--on-store-error closed`` and again with ``open``.

Writes ``reports/cluster.json`` (and Locust's CSV/HTML/logs under ``reports/cluster/``); exits
non-zero when a check fails.

This module is the command line; the measured runs are in :mod:`.measure`, the
faults in :mod:`.faults`, the checks and headline in :mod:`.report`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from same_defense.accounts import KeyStore, RedisStore

from ..load.common import ensure_repository, exit_on_sigterm, load_test_data
from ..load.distributed import LoadSettings
from .checks import HonestClients, cross_path, redis_outage
from .faults import fault_schedule, rejoined
from .measure import (
    CLASSES,
    compare,
    cpu_seconds,
    cpu_snapshot,
    images_per_request,
    measured_run,
    redis_commands,
    summarise_run,
    triton_requests,
    unit_costs,
)
from .replicas import Cluster
from .report import checks, headline

__all__ = [  # what was importable from here before the split, still is
    "CLASSES",
    "KEY_KINDS",
    "checks",
    "compare",
    "cpu_seconds",
    "cpu_snapshot",
    "fault_schedule",
    "headline",
    "images_per_request",
    "main",
    "measured_run",
    "provision_keys",
    "redis_commands",
    "rejoined",
    "summarise_run",
    "triton_requests",
    "unit_costs",
]

KEY_KINDS = ("benign", "synthetic", "proxy")


def provision_keys(workdir: Path, users: int) -> tuple[Path, Path, dict[str, str]]:
    """The gateways' key file, Locust's keys file (one account per simulated user and class)
    and the keys of the probe accounts (``probe``, ``honest``, ``thief``)."""
    store = KeyStore(workdir / "keys.json")
    locust_keys = workdir / "locust-keys.json"
    keys = {kind: [store.add(f"{kind}-{i}") for i in range(users)] for kind in KEY_KINDS}
    locust_keys.write_text(json.dumps(keys))
    probes = {name: store.add(name) for name in ("probe", "honest", "thief")}
    return store.path, locust_keys, probes


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


def _faults(cluster, settings, args, data_file, locust_keys, probes, data) -> dict:
    """Locust under load while a Triton and then a gateway are killed and restarted."""
    third = args.fault_run_time / 4
    honest = HonestClients(cluster.url, probes["honest"], data["benign"][:200])
    faults = measured_run(
        cluster,
        replace(settings, run_time_s=args.fault_run_time),
        data_file,
        locust_keys,
        args.out / "faults",
        during=fault_schedule(cluster, third, 2.2 * third, down_s=2.0, honest=honest),
    )
    faults["rejoined"] = rejoined(faults["faults"])
    faults["thief_still_suspected"] = (
        RedisStore(cluster.redis.url).get("thief").suspected_at_query > 0
    )
    faults["nginx_upstream_log_lines"] = len(cluster.balancer.upstream_errors())
    return faults


def _redis_outages(cluster, probes, images, outage_s: float) -> dict:
    """Redis frozen with the gateways failing closed, then open; suspicion must survive."""
    outages = {"closed": redis_outage(cluster, probes["honest"], images, outage_s)}
    cluster.restart_gateways("open")
    outages["open"] = redis_outage(cluster, probes["honest"], images, outage_s)
    outages["thief_suspected_after"] = (
        RedisStore(cluster.redis.url).get("thief").suspected_at_query > 0
    )
    return outages


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
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time_s=args.run_time,
        workers=args.workers,
        repository=args.repository,
    )
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
                cluster,
                "thief",
                probes["thief"],
                probes["honest"],
                data["synthetic"],
                data["benign"][:64],
            )
            print("== faults under load: kill a Triton, then a gateway", flush=True)
            report["faults"] = _faults(
                cluster, settings, args, data_file, locust_keys, probes, data
            )
            print("== Redis frozen: fail closed, then fail open", flush=True)
            report["redis_outage"] = _redis_outages(
                cluster, probes, data["benign"][:4], args.outage
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["checks"] = checks(report)
    report["passed"] = all(report["checks"].values())
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(headline(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
