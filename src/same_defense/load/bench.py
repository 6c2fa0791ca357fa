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

For each (batch, concurrency) the four targets run back to back, so the ratios compare
figures taken under the same background load (this machine is shared). Results go to
``reports/bench.json``; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..accounts.local_redis import LocalRedis
from ..serving.embedded import EmbeddedTriton, free_port
from .account_cost import account_layer_cost
from .common import (
    benign_images,
    current_settings,
    ensure_repository,
    exit_on_sigterm,
    parse_overrides,
    tuned_copy,
)
from .gateways import GatewayProcess, bench_key
from .stats import cost_breakdown, gap_breakdown, latency_summary, ratio

SERVED = ("same", "victim")
GATEWAY = ("gateway_same", "gateway_same_keys_only")
IN_PROCESS = ("inprocess_same", "inprocess_victim")
TARGETS = SERVED + GATEWAY + IN_PROCESS

# A worker is (call, close): call(batch) sends one request and waits for its answer.
MAX_ERRORS_IN_A_ROW = 20
Worker = tuple[Callable[[np.ndarray], object], Callable[[], None]]
RESNET18_REPOSITORY = Path("artifacts/bench-resnet18/model_repository")


def _send_until_closed(
    call: Callable[[np.ndarray], object],
    batches: list[np.ndarray],
    first: int,
    window: dict[str, float],
    latencies: list[float],
    errors: list[str],
) -> int:
    """One worker's loop: send, wait, record the latency of answers inside the window, until
    the window closes; returns the requests answered (warm-up included)."""
    k, in_a_row, answered = first, 0, 0
    while True:
        start = time.perf_counter()
        if start >= window["end"]:
            return answered
        try:
            call(batches[k % len(batches)])
        except Exception as exc:  # counted and reported, never silently dropped
            errors.append(f"{type(exc).__name__}: {exc}")
            in_a_row += 1
            if in_a_row >= MAX_ERRORS_IN_A_ROW:  # the target is gone: stop trying
                return answered
            continue
        end = time.perf_counter()
        in_a_row = 0
        k += 1
        answered += 1
        if window["start"] <= end <= window["end"]:
            latencies.append(end - start)


def closed_loop(
    make_worker: Callable[[], Worker],
    batches: list[np.ndarray],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> dict:
    """Run ``concurrency`` closed-loop workers; summarise requests that finish in the window.

    The window opens ``warmup_s`` after every worker is connected and lasts ``duration_s``.
    Requests that complete inside it count towards throughput and latency (their start may
    fall in the warm-up: at saturation that is what a request waits).
    """
    window: dict[str, float] = {}

    def open_window() -> None:  # runs once, when every worker has reached the barrier
        window["start"] = time.perf_counter() + warmup_s
        window["end"] = window["start"] + duration_s

    barrier = threading.Barrier(concurrency, action=open_window)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []  # one message per failed request (list.append is thread-safe)
    sent = [0] * concurrency

    def work(index: int) -> None:
        try:
            call, close = make_worker()
        except Exception as exc:
            errors.append(f"cannot start a worker: {type(exc).__name__}: {exc}")
            barrier.abort()  # the others would wait for this one for ever
            return
        try:
            barrier.wait()
            # Workers start at different batches so they do not send the same one.
            sent[index] = _send_until_closed(call, batches, index, window, latencies[index], errors)
        except threading.BrokenBarrierError:
            return
        finally:
            close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [x for per_worker in latencies for x in per_worker]
    if errors and not done:
        raise RuntimeError(f"every request failed ({len(errors)}); first: {errors[0]}")
    summary = latency_summary(done, duration_s, len(batches[0]))
    summary["errors"] = len(errors)
    if errors:
        summary["first_error"] = errors[0]
    summary["images_sent"] = sum(sent) * len(batches[0])  # warm-up included, for CPU accounting
    return summary


def triton_worker(url: str, model: str, timeout_s: float = 120.0, key: str | None = None) -> Worker:
    """One gRPC client per worker (tritonclient's clients are not meant to be shared)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    headers = {"authorization": f"Bearer {key}"} if key else None

    def call(batch: np.ndarray) -> object:
        tensor = grpcclient.InferInput("IMAGE", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return client.infer(model, [tensor], client_timeout=timeout_s, headers=headers)

    return call, client.close


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
) -> dict:
    """One closed-loop cell plus CPU accounting and, for a served target, Triton's own
    per-model breakdown."""
    server_pids = server_pids or []
    before = server_counters(url) if url else None
    cpu0 = (cpu_seconds(server_pids), cpu_seconds([os.getpid()], children=False))
    r = closed_loop(make_worker, batches, concurrency, warmup_s, duration_s)
    cpu1 = (cpu_seconds(server_pids), cpu_seconds([os.getpid()], children=False))
    # CPU time per image is far less sensitive to other tenants than wall-clock throughput:
    # it is the cost, where throughput is the cost plus contention.
    sent = max(1, r.pop("images_sent"))
    r["cpu_ms_per_image"] = {
        "server": round((cpu1[0] - cpu0[0]) * 1e3 / sent, 4),
        "client": round((cpu1[1] - cpu0[1]) * 1e3 / sent, 4),
    }
    if before is not None:
        # Includes the warm-up: it describes how the server ran, not just the window. The
        # pause lets Triton finish accounting for the last requests before the next cell.
        time.sleep(0.2)
        r["server"] = server_breakdown(before, server_counters(url))
    return r


def make_batches(images: np.ndarray, batch_size: int, count: int = 16) -> list[np.ndarray]:
    """Up to ``count`` distinct contiguous batches cut from ``images`` (cycled if short)."""
    n = max(1, min(count, len(images) // batch_size))
    reps = -(-n * batch_size // len(images))
    pool = np.concatenate([images] * reps) if reps > 1 else images
    return [np.ascontiguousarray(pool[i * batch_size : (i + 1) * batch_size]) for i in range(n)]


def in_process_workers(repository: Path, threads: int) -> dict[str, Callable[[], Worker]]:
    """Worker factories for the in-process targets; sessions are shared (onnxruntime's run is
    thread-safe and releases the GIL), as a server's instance would be."""
    from ..serving.inprocess import InProcessSame

    pipeline = InProcessSame(repository, threads=threads)
    victim = pipeline.graphs.victim

    def nothing() -> None:
        pass

    return {
        "inprocess_same": lambda: (pipeline.infer, nothing),
        "inprocess_victim": lambda: (lambda x: victim.run(None, {"IMAGE": x}), nothing),
    }


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
    # Added latency, in ms, per cell: everything the public endpoint adds, the gateway's own
    # share (keys only vs Triton directly) and the account layer's (account defense on vs
    # off, both through a gateway).
    added = {
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
    floor_cpu = {t: min((cpu_us(x) for x in cells_of(t, batch_sizes)), default=None)
                 for t in IN_PROCESS}  # fmt: skip
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
                    same["images_per_s"], victim["images_per_s"],
                    local_same["images_per_s"], local_victim["images_per_s"],
                )  # fmt: skip
            if server_cpu and floor_cpu["inprocess_same"] and floor_cpu["inprocess_victim"]:
                entry["gap_cpu"] = cost_breakdown(
                    cpu_us(same), cpu_us(victim),
                    floor_cpu["inprocess_same"], floor_cpu["inprocess_victim"],
                )  # fmt: skip
        saturation[str(b)] = entry
    saturation["compute_floor"] = {
        t: {
            "images_per_s": floor_wall[t]["images_per_s"] if floor_wall[t] else None,
            "cpu_us_per_image": round(floor_cpu[t], 1) if floor_cpu[t] else None,
        }
        for t in IN_PROCESS
    }
    return {"ratios": ratios, "added_latency_ms": added_ms, "saturation": saturation}


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
        "--inprocess-threads", type=int, default=1,
        help="onnxruntime intra-op threads in-process (1 = what each served instance uses)",
    )  # fmt: skip
    p.add_argument(
        "--url", help="benchmark this running server instead of starting one (host:grpc_port)"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="serve a temporary copy of the repository with this ServingSettings field "
        "changed (repeatable), e.g. --set reconstructor_instances=2",
    )  # fmt: skip
    p.add_argument("--log-file", type=Path, default=Path("logs/bench-tritonserver.log"))
    p.add_argument("--no-resnet18", dest="resnet18", action="store_false")
    p.add_argument(
        "--resnet18-repository", type=Path, default=RESNET18_REPOSITORY,
        help="the ResNet-18 build (made here with one epoch per stage if missing)",
    )  # fmt: skip
    p.add_argument("--resnet18-concurrency", type=int, nargs="+", default=[4, 16])
    return p.parse_args(argv)


def resnet18_pass(args: argparse.Namespace) -> dict:
    """``same`` and ``victim`` served from a ResNet-18 build, on the same batch sizes."""
    if not (args.resnet18_repository / "defense" / "1" / "same_calibration.json").exists():
        out = args.resnet18_repository.parent
        # One epoch on 1,000 images: a timing build (victim accuracy is near chance).
        cmd = [
            sys.executable, "-m", "same_defense.export.build", "--victim-arch", "resnet18",
            "--max-train", "1000", "--victim-epochs", "1", "--mae-epochs", "1",
            "--shadow-epochs", "1", "--repository", str(args.resnet18_repository),
            "--artifacts", str(out / "artifacts"), "--report", str(out / "build.json"), "--quiet",
        ]  # fmt: skip
        print(f"== building the ResNet-18 timing repository: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    sub = argparse.Namespace(
        **{**vars(args), "repository": args.resnet18_repository, "targets": list(SERVED),
           "concurrency": args.resnet18_concurrency, "overrides": [], "url": None},
    )  # fmt: skip
    report = run(sub, account_layer=False)
    keep = ("config", "failed_requests", "results", "ratios", "saturation", "goals")
    return {"victim_architecture": "resnet18", "timing_build": True} | {k: report[k] for k in keep}


def start_gateways(
    targets: list[str], url: str, repository: Path, running: list[GatewayProcess]
) -> dict[str, Callable[[], Worker]]:
    """Start one gateway per target in front of ``url`` (appended to ``running`` as they start,
    so the caller stops them even if a later one fails); their worker factories."""
    keys_file = Path(tempfile.mkdtemp(prefix="same-bench-keys-")) / "keys.json"
    key = bench_key(keys_file)
    factories: dict[str, Callable[[], Worker]] = {}
    for target in targets:
        gateway = GatewayProcess(
            url, repository, keys_file, account_defense=target == "gateway_same"
        )
        # The bench calls gRPC only; the gateway's default HTTP port (8000) is shared by both
        # gateways here and by anything else on the machine.
        if "--no-http" not in gateway.command:
            gateway.command.append("--no-http")
        gateway.start(key)
        running.append(gateway)
        factories[target] = lambda u=gateway.url: triton_worker(u, "same", key=key)
    return factories


def measure_grid(
    args: argparse.Namespace,
    images: np.ndarray,
    factories: dict[str, Callable[[], Worker]],
    url: str | None,
    server_pids: list[int],
) -> dict:
    """Every (batch, concurrency) cell for every target, the targets back to back per cell."""
    results: dict = {t: {} for t in args.targets}
    for b in args.batch_sizes:
        batches = make_batches(images, b)
        for c in args.concurrency:
            for target in args.targets:
                r = measure_cell(
                    factories[target], batches, c, args.warmup, args.duration,
                    url if target in SERVED + GATEWAY else None, server_pids,
                )  # fmt: skip
                results[target].setdefault(str(b), {})[str(c)] = r
                cpu = r["cpu_ms_per_image"]
                if r["errors"]:
                    print(f"   ! {r['errors']} failed requests: {r['first_error']}", flush=True)
                print(
                    f"   {target:17s} batch {b:3d} concurrency {c:3d}: "
                    f"{r['images_per_s']:9.1f} images/s  p50 {r['p50_ms']:8.2f} ms  "
                    f"p99 {r['p99_ms']:8.2f} ms  CPU ms/image server {cpu['server']:.3f} "
                    f"client {cpu['client']:.3f}",
                    flush=True,
                )
    return results


def run(args: argparse.Namespace, account_layer: bool = True) -> dict:
    manifest = ensure_repository(args.repository)
    images = benign_images(manifest)
    served = [t for t in args.targets if t in SERVED + GATEWAY]
    gateways = [t for t in args.targets if t in GATEWAY]
    local = [t for t in args.targets if t in IN_PROCESS]
    overrides = parse_overrides(args.overrides)
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
            server = EmbeddedTriton(
                repository, grpc_port=free_port(), http_port=free_port(),
                metrics_port=free_port(), log_file=args.log_file,
            ).start()  # fmt: skip
            url = server.grpc_url
            server_pids = [server.process.pid]
            print(f"== serving on {url} (log {args.log_file})", flush=True)
        factories: dict[str, Callable[[], Worker]] = {
            t: (lambda t=t: triton_worker(url, t)) for t in served if t in SERVED
        }
        if gateways:
            factories.update(start_gateways(gateways, url, repository, running))
            server_pids += [g.process.pid for g in running]
        if local:
            factories.update(
                {
                    t: f
                    for t, f in in_process_workers(repository, args.inprocess_threads).items()
                    if t in local
                }
            )
        started = time.perf_counter()
        results = measure_grid(args, images, factories, url, server_pids)
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
        ),  # fmt: skip
        "results": results,
        **derived,
        "goals": goals(results, derived, args.batch_sizes, args.concurrency),
    }


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
    summary = {k: report[k] for k in ("saturation", "goals", "added_latency_ms") if k in report}
    if "resnet18" in report:
        summary["resnet18"] = {k: report["resnet18"][k] for k in ("saturation", "goals")}
    print(json.dumps(summary, indent=2))
    print(f"== wrote {args.output}")
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
