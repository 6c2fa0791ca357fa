"""``make soak``: a long Locust run of benign and attacker users against the *protected*
endpoint (the gateway in front of Triton, as deployed), sampling the memory of the server,
its Python stub processes and the gateway.

Writes ``reports/soak.json``: requests served and failed (per user class), the defense's own
counters, and resident memory per process at the start and end, where *start* and *end* are
the means over the first and the last minute of load, plus the growth between them. The run
passes when nothing failed and the server's memory (tritonserver + stubs) grew under 10 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from same_defense.accounts import KeyStore
from same_defense.gateway.options import AccountOptions
from same_defense.serving.deployment import ProtectedService
from same_defense.serving.metrics import read_defense_counters

from .common import add_locustfile_argument, ensure_repository, exit_on_sigterm, load_test_data
from .loadtest import locust_command, run_locust, run_seconds
from .mix import LocustMix
from .stats import read_locust_stats

MAX_GROWTH = 0.10
# Locust user classes, each with its own accounts (see loadtest/locustfile.py).
KEY_KINDS = ("benign", "synthetic", "proxy")
WINDOW_S = 60.0


class MemorySampler(threading.Thread):
    """RSS of the server, each stub and this process (the gateway) every ``interval_s``."""

    def __init__(self, server_pid: int, interval_s: float = 5.0) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.server = psutil.Process(server_pid)
        self.gateway = psutil.Process()
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self._stop_event = threading.Event()
        self.started = time.monotonic()

    def sample(self) -> dict:
        stubs = {}
        for child in self.server.children(recursive=True):
            try:
                stubs[" ".join(child.cmdline()[1:2]) or str(child.pid)] = child.memory_info().rss
            except psutil.Error:
                continue
        server_rss = self.server.memory_info().rss
        return {
            "t_s": round(time.monotonic() - self.started, 1),
            "tritonserver": server_rss,
            "stubs": stubs,
            "server_total": server_rss + sum(stubs.values()),
            "gateway_process": self.gateway.memory_info().rss,
        }

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append(self.sample())
            except psutil.Error:
                pass
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(self.interval_s + 5)


def window_means(samples: list[dict], duration_s: float, window_s: float = WINDOW_S) -> dict:
    """Mean RSS (MiB) per process over the first and the last ``window_s`` of the run."""

    def mean(rows: list[dict], key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])) / 2**20, 1) if rows else float("nan")

    first = [s for s in samples if s["t_s"] <= window_s]
    last = [s for s in samples if s["t_s"] >= duration_s - window_s]
    out: dict = {"samples": len(samples), "first_window": len(first), "last_window": len(last)}
    for key in ("server_total", "tritonserver", "gateway_process"):
        start, end = mean(first, key), mean(last, key)
        out[key] = {"start_mib": start, "end_mib": end, "growth": round(end / start - 1, 4)}
    stub_names = sorted({n for s in samples for n in s["stubs"]})
    out["stubs"] = {}
    for name in stub_names:
        a = [s["stubs"][name] for s in first if name in s["stubs"]]
        b = [s["stubs"][name] for s in last if name in s["stubs"]]
        if a and b:
            start, end = np.mean(a) / 2**20, np.mean(b) / 2**20
            out["stubs"][name] = {
                "start_mib": round(start, 1),
                "end_mib": round(end, 1),
                "growth": round(end / start - 1, 4),
            }
    return out


def provision_keys(key_file: Path, locust_keys: Path, users: int) -> Path:
    """One account per simulated user (benign-1..., synthetic-1..., proxy-1...): the gateway's
    key file and the keys file Locust's users draw from."""
    store = KeyStore(key_file)
    keys = {kind: [store.add(f"{kind}-{i}") for i in range(users)] for kind in KEY_KINDS}
    locust_keys.write_text(json.dumps(keys))
    return key_file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    add_locustfile_argument(p)
    p.add_argument("--out", type=Path, default=Path("reports/soak"))
    p.add_argument("--report", type=Path, default=Path("reports/soak.json"))
    p.add_argument("--run-time", default="11m", help="Locust run time (at least 10m to pass)")
    LocustMix.add_arguments(p, users=12, spawn_rate=4.0)
    p.add_argument("--interval", type=float, default=5.0, help="memory sampling period (s)")
    p.add_argument("--log-file", type=Path, default=Path("logs/soak-tritonserver.log"))
    args = p.parse_args(argv)
    args.processes = 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = ensure_repository(args.repository)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="same-soak-"))
    data_file = workdir / "soak-data.npz"
    np.savez(data_file, **load_test_data(manifest))
    duration = run_seconds(args.run_time)
    args.keys_file = workdir / "locust-keys.json"
    key_store = provision_keys(workdir / "keys.json", args.keys_file, args.users)
    service = ProtectedService.on_free_ports(
        args.repository, args.log_file, AccountOptions(keys_file=key_store)
    )
    try:
        service.start()
        print(f"== soak: {args.run_time} of Locust against {service.public_url} (gateway)")
        sampler = MemorySampler(service.triton.process.pid, args.interval)
        before = read_defense_counters(service.metrics_url)
        sampler.start()
        code = run_locust(
            locust_command(args, "same", service.public_url, data_file),
            args.out / "soak.log",
            duration + 180,
        )
        sampler.stop()
        counters = read_defense_counters(service.metrics_url) - before
        accounts = service.gateway.accounts
        suspected = sorted(a for a, _ in accounts.suspected()) if accounts else []
        restarts = len(service.triton.supervisor.restarts) if service.triton.supervisor else 0
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    stats_file = args.out / "same_stats.csv"  # locust_command names the CSVs after the model
    stats = read_locust_stats(stats_file) if stats_file.exists() else {}
    memory = window_means(sampler.samples, duration)
    total = stats.get("Aggregated", {})
    report = {
        "run_time_s": duration,
        "users": args.users,
        "weights": LocustMix.from_args(args).weights,
        "requests_served": total.get("requests"),
        "failures": total.get("failures"),
        "per_class": {k: v for k, v in stats.items() if k != "Aggregated"},
        "defense_counters": {
            "scored": int(counters.scored),
            "flagged": int(counters.flagged),
            "invalid": int(counters.invalid),
        },
        "stub_restarts": restarts,
        "accounts_suspected": suspected,
        "memory": memory,
        "memory_samples_mib": [
            [s["t_s"], round(s["server_total"] / 2**20, 1)] for s in sampler.samples
        ],
        "locust_exit_code": code,
    }
    growth = memory["server_total"]["growth"]
    report["passed"] = bool(
        total.get("failures") == 0
        and code == 0
        and duration >= 600
        and growth < MAX_GROWTH
        and (total.get("requests") or 0) > 0
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"== soak: {report['requests_served']} requests, {report['failures']} failures; "
        f"server memory {memory['server_total']['start_mib']} -> "
        f"{memory['server_total']['end_mib']} MiB ({growth:+.1%}); wrote {args.report}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
