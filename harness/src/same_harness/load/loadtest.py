"""``make loadtest``: serve the repository and run Locust headless against ``same`` and then
against the bare ``victim`` with the same user mix.

Writes under ``reports/loadtest/``: Locust's CSV files (``<model>_stats.csv`` and friends) and
HTML report (``<model>.html``) per model, its log (``<model>.log``), ``summary.json``
(p50/p95/p99 latency, requests and images per second, failures, per model and user class,
and the same/victim ratios) and ``comparison.png``.

Locust runs as a subprocess (it monkey-patches the standard library with gevent, which this
process must not have). Load generation shares the machine's cores with the server: see
``loadtest/README.md`` for ``--processes`` and master/worker runs.
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
from pathlib import Path

import numpy as np

from same_defense.serving.embedded import EmbeddedTriton
from same_defense.serving.metrics import read_defense_counters

from .common import (
    add_locustfile_argument,
    ensure_repository,
    exit_on_sigterm,
    load_test_data,
    locustfile,
)
from .loadtest_report import MODELS, plot, summary_of_run
from .mix import LocustMix
from .stats import read_locust_stats


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    add_locustfile_argument(p)
    p.add_argument("--out", type=Path, default=Path("reports/loadtest"))
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    LocustMix.add_arguments(p, users=20, spawn_rate=10.0)
    p.add_argument("--run-time", default="60s", help="Locust run time per model (60s, 2m)")
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="Locust --processes (0: one process; -1: one per core). Here the server needs "
        "the cores too, so more generator processes mostly measure contention.",
    )
    p.add_argument(
        "--url", help="load this running server (host:grpc_port) instead of starting one"
    )
    p.add_argument(
        "--metrics-url", help="with --url: its metrics endpoint, for the defense's counters"
    )
    p.add_argument("--log-file", type=Path, default=Path("logs/loadtest-tritonserver.log"))
    p.add_argument(
        "--write-data",
        type=Path,
        metavar="NPZ",
        help="only write the images Locust sends to this file (for --data-file on workers)",
    )
    return p.parse_args(argv)


def locust_command(
    args: argparse.Namespace, model: str, host: str, data_file: Path, mix: LocustMix | None = None
) -> list[str]:
    """Locust headless against ``model`` at ``host``; the user mix is ``args``' unless given."""
    prefix = args.out / model
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile(getattr(args, "locustfile", None))),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.run_time,
        "--host",
        host,
        "--csv",
        str(prefix),
        "--html",
        str(prefix) + ".html",
        "--only-summary",
        "--stop-timeout",
        "5",
        "--target-model",
        model,
        "--repository",
        str(args.repository),
        "--data-file",
        str(data_file),
        *(mix or LocustMix.from_args(args)).locustfile_args(),
    ]
    if args.processes:
        command += ["--processes", str(args.processes)]
    if getattr(args, "keys_file", None):
        command += ["--keys-file", str(args.keys_file)]
    return command


def run_seconds(run_time: str) -> float:
    """Locust's ``-t`` syntax (``90``, ``60s``, ``2m``, ``1h30m``) in seconds."""
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for ch in run_time.strip():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total, number = total + float(number) * units[ch], ""
        else:
            raise ValueError(f"cannot read run time {run_time!r}")
    return total + (float(number) if number else 0.0)


def run_locust(command: list[str], log: Path, timeout_s: float) -> int:
    """Run Locust to the end (its exit code is 1 when any request failed)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own session: only Locust and its workers
            proc.wait()
            raise RuntimeError(
                f"Locust did not finish within {timeout_s:.0f}s; see {log}"
            ) from None


def _run_models(args: argparse.Namespace, data_file: Path) -> tuple[dict, dict, dict]:
    """Locust against each model in turn: ``(stats, defense counters, exit codes)``."""
    timeout_s = run_seconds(args.run_time) + 120
    stats: dict[str, dict] = {}
    counters: dict[str, dict] = {}
    codes: dict[str, int] = {}
    server = None
    try:
        url, metrics_url = args.url, args.metrics_url
        if not url:
            server = EmbeddedTriton.on_free_ports(args.repository, args.log_file).start()
            url, metrics_url = server.grpc_url, server.metrics_url
            print(f"== serving on {url} (log {args.log_file})", flush=True)
        for model in args.models:
            print(f"== Locust against {model} for {args.run_time}", flush=True)
            before = read_defense_counters(metrics_url) if metrics_url else None
            started = time.perf_counter()
            codes[model] = run_locust(
                locust_command(args, model, url, data_file), args.out / f"{model}.log", timeout_s
            )
            if before is not None:
                delta = read_defense_counters(metrics_url) - before
                counters[model] = {
                    "scored": int(delta.scored),
                    "flagged": int(delta.flagged),
                    "invalid": int(delta.invalid),
                    "flag_rate": round(delta.flag_rate, 4) if delta.scored else None,
                }
            stats[model] = read_locust_stats(args.out / f"{model}_stats.csv")
            elapsed = time.perf_counter() - started
            print(f"   {model}: exit code {codes[model]} after {elapsed:.0f}s", flush=True)
    finally:
        if server is not None:
            server.stop()
    return stats, counters, codes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = ensure_repository(args.repository)
    if args.write_data:
        args.write_data.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.write_data, **load_test_data(manifest))
        print(f"== wrote {args.write_data}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    # Every Locust process loads this file in milliseconds instead of rebuilding the data.
    workdir = Path(tempfile.mkdtemp(prefix="same-loadtest-"))
    data_file = workdir / "loadtest-data.npz"
    np.savez(data_file, **load_test_data(manifest))
    try:
        stats, counters, codes = _run_models(args, data_file)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summary_of_run(args, stats, counters, codes)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.out / "comparison.png")
    for model, entry in summary["models"].items():
        for name, row in entry.items():
            print(
                f"   {model:6s} {name:18s} {row['requests_per_s']:8.1f} req/s  "
                f"p50 {row['p50_ms']} p95 {row['p95_ms']} p99 {row['p99_ms']} ms  "
                f"failures {row['failures']}"
            )
    print(f"== wrote {args.out}/summary.json and comparison.png")
    return 0 if summary["failures_total"] == 0 and not any(codes.values()) else 1


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
