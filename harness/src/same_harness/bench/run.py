"""``make bench``: closed-loop throughput and latency of ``same``, ``victim`` and in-process.

Every cell is a closed loop: ``concurrency`` workers each send one request of ``batch``
benign test images, wait for the answer and send the next, for a fixed time after a warm-up.
Targets:

- ``same``: the served ensemble (victim + reconstructor + Python defense step) over gRPC;
- ``victim``: the bare victim model on the same server, same client code;
- ``gateway_same`` / ``gateway_same_keys_only``: ``same`` through the public gateway (its own
  process, an API key per request), with and without the account-level defense: what a
  client of the default deployment sees, and (their difference) what the account layer costs;
- ``inprocess_same`` / ``inprocess_victim``: the same ONNX graphs (and, for ``same``, the same
  defense code) in onnxruntime in this process, no server: the compute floor.

Then, unless ``--no-resnet18``, ``same`` and ``victim`` again with a ResNet-18 victim (and
shadow) built with one epoch each (timing only: its accuracy is not the point), reported
under ``resnet18``: the same/victim ratio when the victim is a realistic network.

The bare victim is served on equal footing by default: with as many instances as the
reconstructor (``--victim-as-shipped`` keeps the repository's count), so that the ratio does
not credit ``same`` for using more cores. ``batch1`` in the report holds what one image at a
time costs an honest user: ``same``'s p50 over the victim, the gateway's p50 over ``same``,
and the gateway process's own CPU per request (``gateway_cpu_ms_per_request`` per gateway
cell), against issue 20's bounds.

For each (batch, concurrency) the targets run back to back, so the ratios compare
figures taken under the same background load (this machine is shared). Results go to
``reports/bench.json``; the table is printed.

This module is the command line and the run (servers, gateways, the grid of cells); the
closed loop is in :mod:`.closed_loop`, the accounting of a cell in :mod:`.server_stats`,
the ratios, goals and table in :mod:`.derive`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from same_defense.accounts.local_redis import LocalRedis
from same_defense.core.manifest import is_built
from same_defense.serving.embedded import EmbeddedTriton

from ..load.common import (
    benign_images,
    current_settings,
    ensure_repository,
    exit_on_sigterm,
    parse_overrides,
    tuned_copy,
)
from ..load.gateways import GatewayProcess
from .account_cost import account_layer_cost
from .closed_loop import MAX_ERRORS_IN_A_ROW, Worker, closed_loop, make_batches
from .derive import derive, format_table, goals
from .server_stats import cpu_seconds, measure_cell, server_breakdown, server_counters
from .targets import (
    GATEWAY,
    IN_PROCESS,
    SERVED,
    TARGETS,
    in_process_workers,
    start_gateways,
    triton_worker,
    worker_factories,
)

__all__ = [  # what was importable from here before the split, still is
    "GATEWAY",
    "IN_PROCESS",
    "MAX_ERRORS_IN_A_ROW",
    "RESNET18_REPOSITORY",
    "SERVED",
    "TARGETS",
    "Worker",
    "closed_loop",
    "cpu_seconds",
    "derive",
    "equal_footing",
    "format_table",
    "goals",
    "in_process_workers",
    "main",
    "make_batches",
    "measure_cell",
    "run",
    "server_breakdown",
    "server_counters",
    "start_gateways",
    "triton_worker",
    "worker_factories",
]

RESNET18_REPOSITORY = Path("artifacts/bench-resnet18/model_repository")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--output", type=Path, default=Path("reports/bench.json"))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell")
    p.add_argument(
        "--inprocess-threads",
        type=int,
        default=1,
        help="onnxruntime intra-op threads in-process (1 = what each served instance uses)",
    )
    p.add_argument(
        "--url", help="benchmark this running server instead of starting one (host:grpc_port)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="serve a temporary copy of the repository with this ServingSettings field "
        "changed (repeatable), e.g. --set reconstructor_instances=2",
    )
    p.add_argument(
        "--victim-as-shipped",
        dest="equal_footing",
        action="store_false",
        help="serve the bare victim with the repository's own instance count; by default it "
        "gets as many instances as the reconstructor (equal footing: `same` uses every core "
        "through its reconstructor instances, so the victim is given the same)",
    )
    p.add_argument("--log-file", type=Path, default=Path("logs/bench-tritonserver.log"))
    p.add_argument("--no-resnet18", dest="resnet18", action="store_false")
    p.add_argument(
        "--resnet18-repository",
        type=Path,
        default=RESNET18_REPOSITORY,
        help="the ResNet-18 build (made here with one epoch per stage if missing)",
    )
    p.add_argument("--resnet18-concurrency", type=int, nargs="+", default=[4, 16])
    return p.parse_args(argv)


def resnet18_pass(args: argparse.Namespace) -> dict:
    """``same`` and ``victim`` served from a ResNet-18 build, on the same batch sizes."""
    if not is_built(args.resnet18_repository):
        out = args.resnet18_repository.parent
        # One epoch on 1,000 images: a timing build (victim accuracy is near chance).
        cmd = [sys.executable, "-m", "same_defense.export.build", "--victim-arch", "resnet18"]
        cmd += ["--max-train", "1000", "--victim-epochs", "1", "--mae-epochs", "1"]
        cmd += ["--shadow-epochs", "1", "--repository", str(args.resnet18_repository)]
        cmd += ["--artifacts", str(out / "artifacts"), "--report", str(out / "build.json")]
        cmd += ["--quiet"]
        print(f"== building the ResNet-18 timing repository: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    sub = argparse.Namespace(
        **{
            **vars(args),
            "repository": args.resnet18_repository,
            "targets": list(SERVED),
            "concurrency": args.resnet18_concurrency,
            "overrides": [],
            "url": None,
        },
    )
    report = run(sub, account_layer=False)
    keep = ("config", "failed_requests", "results", "ratios", "saturation", "goals")
    return {"victim_architecture": "resnet18", "timing_build": True} | {k: report[k] for k in keep}


def measure_grid(
    args: argparse.Namespace,
    images: np.ndarray,
    factories: dict[str, Callable[[], Worker]],
    url: str | None,
    server_pids: list[int],
    gateway_pids: dict[str, int] | None = None,
) -> dict:
    """Every (batch, concurrency) cell for every target, the targets back to back per cell;
    ``gateway_pids``: the gateway process of each gateway target (its own CPU is reported)."""
    results: dict = {t: {} for t in args.targets}
    gateway_pids = gateway_pids or {}
    for b in args.batch_sizes:
        batches = make_batches(images, b)
        for c in args.concurrency:
            for target in args.targets:
                r = measure_cell(
                    factories[target],
                    batches,
                    c,
                    args.warmup,
                    args.duration,
                    url if target in SERVED + GATEWAY else None,
                    server_pids,
                    gateway_pids.get(target),
                )
                results[target].setdefault(str(b), {})[str(c)] = r
                cpu = r["cpu_ms_per_image"]
                if r["errors"]:
                    print(f"   ! {r['errors']} failed requests: {r['first_error']}", flush=True)
                print(
                    f"   {target:17s} batch {b:3d} concurrency {c:3d}: "
                    f"{r['images_per_s']:9.1f} images/s  p50 {r['p50_ms']:8.2f} ms  "
                    f"p99 {r['p99_ms']:8.2f} ms  CPU ms/image server {cpu['server']:.3f} "
                    f"client {cpu['client']:.3f}"
                    + (
                        f"  gateway CPU ms/request {r['gateway_cpu_ms_per_request']:.3f}"
                        if "gateway_cpu_ms_per_request" in r
                        else ""
                    ),
                    flush=True,
                )
    return results


def run(args: argparse.Namespace, account_layer: bool = True) -> dict:
    manifest = ensure_repository(args.repository)
    images = benign_images(manifest)
    served = [t for t in args.targets if t in SERVED + GATEWAY]
    overrides = parse_overrides(args.overrides)
    if getattr(args, "equal_footing", True) and not args.url:
        overrides = equal_footing(args.repository, overrides)
    repository = args.repository
    if overrides:
        repository = tuned_copy(args.repository, manifest, overrides)
        print(f"== serving a copy with {overrides}: {repository}", flush=True)
    serving = current_settings(repository)
    server = None
    server_pids: list[int] = []
    running: list[GatewayProcess] = []
    try:
        url = args.url
        if served and not url:
            server = EmbeddedTriton.on_free_ports(repository, args.log_file).start()
            url = server.grpc_url
            server_pids = [server.process.pid]
            print(f"== serving on {url} (log {args.log_file})", flush=True)
        factories = worker_factories(args.targets, url, repository, args.inprocess_threads, running)
        # start_gateways starts them in the order of the targets
        gateway_pids = {
            t: g.process.pid
            for t, g in zip([t for t in args.targets if t in GATEWAY], running, strict=True)
        }
        server_pids += [g.process.pid for g in running]
        started = time.perf_counter()
        results = measure_grid(args, images, factories, url, server_pids, gateway_pids)
        elapsed = time.perf_counter() - started
    finally:
        for gateway in running:
            gateway.stop()
        if server is not None:
            server.stop()
        if overrides:
            shutil.rmtree(repository.parent, ignore_errors=True)
    # With --url the server is not our child: its CPU time is unknown.
    derived = derive(results, args.batch_sizes, args.concurrency, server_cpu=bool(server_pids))
    if account_layer:
        derived["account_layer_us"] = measure_account_layer(
            args.batch_sizes, tuple(manifest["input_shape"])
        )
    return {
        "config": {
            "batch_sizes": args.batch_sizes,
            "concurrency": args.concurrency,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "inprocess_threads": args.inprocess_threads,
            "repository": str(args.repository),
            "overrides": overrides,
            "victim_equal_footing": getattr(args, "equal_footing", True) and not args.url,
            "serving": serving,
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "measured_s": round(elapsed, 1),
            "server_cpu_measured": bool(server_pids),
            "units": "throughput in images/s (requests/s also given); latency in ms",
        },
        "failed_requests": sum(
            cell["errors"]
            for by_batch in results.values()
            for by_conc in by_batch.values()
            for cell in by_conc.values()
        ),
        "results": results,
        **derived,
        "goals": goals(results, derived, args.batch_sizes, args.concurrency),
    }


def equal_footing(repository: Path, overrides: dict) -> dict:
    """``overrides`` with the victim given the reconstructor's instance count, unless the
    caller set ``victim_instances`` or the victim already has as many.

    ``same`` spreads over the cores through its reconstructor instances; a bare victim with
    one instance uses one core, so comparing against it flatters ``same`` (issue 20)."""
    if "victim_instances" in overrides:
        return overrides
    serving = current_settings(repository)
    want = serving["reconstructor"]["instances"]
    if serving["victim"]["instances"] >= want:
        return overrides
    return {**overrides, "victim_instances": want}


def measure_account_layer(batch_sizes: list[int], shape: tuple[int, ...]) -> dict:
    """The gateway's per-request account work, in-process (memory and a local Redis)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            redis_server = LocalRedis(Path(tmp)).start()
        except RuntimeError as exc:  # no redis-server here: memory only
            print(f"   (account layer in Redis not measured: {exc})", flush=True)
            redis_server = None
        try:
            url = redis_server.url if redis_server else None
            cost = account_layer_cost(batch_sizes, shape, repeats=1000, redis_url=url)
        finally:
            if redis_server is not None:
                redis_server.stop()
    print(f"   account layer per request: {cost}", flush=True)
    return cost


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.resnet18 and not args.url:
        report["resnet18"] = resnet18_pass(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report["results"]))
    keep = ("saturation", "goals", "batch1", "added_latency_ms")
    summary = {k: report[k] for k in keep if k in report}
    if "resnet18" in report:
        summary["resnet18"] = {k: report["resnet18"][k] for k in ("saturation", "goals")}
    print(json.dumps(summary, indent=2))
    print(f"== wrote {args.output}")
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
