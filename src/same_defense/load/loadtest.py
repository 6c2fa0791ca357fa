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

from ..serving.embedded import EmbeddedTriton, free_port
from ..serving.metrics import read_defense_counters
from .common import (
    add_locustfile_argument,
    current_settings,
    ensure_repository,
    exit_on_sigterm,
    load_test_data,
    locustfile,
)
from .stats import ratio, read_locust_stats

MODELS = ("same", "victim")
CLASSES = ("benign", "attacker-synthetic", "attacker-proxy")
AGGREGATED = "Aggregated"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    add_locustfile_argument(p)
    p.add_argument("--out", type=Path, default=Path("reports/loadtest"))
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--users", type=int, default=20, help="simulated users per run")
    p.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    p.add_argument("--run-time", default="60s", help="Locust run time per model (60s, 2m)")
    p.add_argument("--benign-weight", type=int, default=8)
    p.add_argument("--synthetic-weight", type=int, default=1)
    p.add_argument("--proxy-weight", type=int, default=1)
    p.add_argument("--attack-batch", type=int, default=16, help="images per attacker request")
    p.add_argument("--attack-burst", type=int, default=10, help="attacker requests per burst")
    p.add_argument(
        "--processes", type=int, default=0,
        help="Locust --processes (0: one process; -1: one per core). Here the server needs "
        "the cores too, so more generator processes mostly measure contention.",
    )  # fmt: skip
    p.add_argument(
        "--url", help="load this running server (host:grpc_port) instead of starting one"
    )
    p.add_argument(
        "--metrics-url", help="with --url: its metrics endpoint, for the defense's counters"
    )
    p.add_argument("--log-file", type=Path, default=Path("logs/loadtest-tritonserver.log"))
    p.add_argument(
        "--write-data", type=Path, metavar="NPZ",
        help="only write the images Locust sends to this file (for --data-file on workers)",
    )  # fmt: skip
    return p.parse_args(argv)


def locust_command(args: argparse.Namespace, model: str, host: str, data_file: Path) -> list[str]:
    prefix = args.out / model
    command = [
        sys.executable, "-m", "locust", "-f", str(locustfile(getattr(args, "locustfile", None))),
        "--headless",
        "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time,
        "--host", host, "--csv", str(prefix), "--html", str(prefix) + ".html",
        "--only-summary", "--stop-timeout", "5",
        "--target-model", model, "--repository", str(args.repository),
        "--data-file", str(data_file),
        "--benign-weight", str(args.benign_weight),
        "--synthetic-weight", str(args.synthetic_weight),
        "--proxy-weight", str(args.proxy_weight),
        "--attack-batch", str(args.attack_batch), "--attack-burst", str(args.attack_burst),
    ]  # fmt: skip
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


def summarise(
    stats: dict[str, dict[str, dict]], batch_sizes: dict[str, int], counters: dict
) -> dict:
    """Per model and user class figures, the same/victim ratios and the failure total."""
    models: dict = {}
    for model, rows in stats.items():
        entry = {}
        for name, row in rows.items():
            key = "all" if name == AGGREGATED else name
            entry[key] = dict(row)
            if name in batch_sizes and row.get("requests_per_s") is not None:
                entry[key]["images_per_s"] = round(row["requests_per_s"] * batch_sizes[name], 2)
        models[model] = entry
    ratios: dict = {}
    if "same" in models and "victim" in models:
        for name in (*CLASSES, "all"):
            a, b = models["same"].get(name), models["victim"].get(name)
            if a and b:
                ratios[name] = {
                    k: ratio(a.get(k), b.get(k))
                    for k in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms")
                }
    failures = sum((m.get("all") or {}).get("failures") or 0 for m in models.values())
    return {
        "models": models,
        "same/victim": ratios,
        "failures_total": failures,
        "defense_counters": counters,
    }


def plot(summary: dict, path: Path) -> None:
    """Latency percentiles and throughput per user class, same next to victim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if m in summary["models"]]
    classes = [c for c in CLASSES if any(c in summary["models"][m] for m in models)]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(classes))
    panels = [
        ("p50_ms", "p50 latency (ms)"),
        ("p95_ms", "p95 latency (ms)"),
        ("p99_ms", "p99 latency (ms)"),
        ("images_per_s", "images / s"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, model in enumerate(models):
            values = [(summary["models"][model].get(c) or {}).get(key) or 0 for c in classes]
            bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(x, classes, fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    cfg = summary["config"]
    fig.suptitle(
        f"Locust, {cfg['users']} users (benign:synthetic:proxy = {cfg['weights']}), "
        f"{cfg['run_time']} per model, zero think time for attackers; "
        f"failures: {summary['failures_total']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    timeout_s = run_seconds(args.run_time) + 120
    stats: dict[str, dict] = {}
    counters: dict[str, dict] = {}
    codes: dict[str, int] = {}
    server = None
    try:
        url, metrics_url = args.url, args.metrics_url
        if not url:
            server = EmbeddedTriton(
                args.repository, grpc_port=free_port(), http_port=free_port(),
                metrics_port=free_port(), log_file=args.log_file,
            ).start()  # fmt: skip
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
            print(
                f"   {model}: exit code {codes[model]} after {time.perf_counter() - started:.0f}s",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    batch_sizes = {
        "benign": 1,
        "attacker-synthetic": args.attack_batch,
        "attacker-proxy": args.attack_batch,
    }
    summary = {
        "config": {
            "users": args.users,
            "spawn_rate": args.spawn_rate,
            "run_time": args.run_time,
            "weights": f"{args.benign_weight}:{args.synthetic_weight}:{args.proxy_weight}",
            "attack_batch": args.attack_batch,
            "attack_burst": args.attack_burst,
            "processes": args.processes,
            "serving": current_settings(args.repository),
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "locust_exit_codes": codes,
            "notes": "latency percentiles are Locust's (1 ms resolution below 100 ms, "
            "then rounded to 2 significant digits); images_per_s = requests_per_s x batch",
        },
        **summarise(stats, batch_sizes, counters),
    }
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
