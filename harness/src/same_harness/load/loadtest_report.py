"""``make loadtest``'s summary (per model and user class, same against victim) and its plot."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from .common import current_settings
from .mix import LocustMix
from .stats import ratio

MODELS = ("same", "victim")
CLASSES = ("benign", "attacker-synthetic", "attacker-proxy")
AGGREGATED = "Aggregated"


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


def summary_of_run(args: argparse.Namespace, stats: dict, counters: dict, codes: dict) -> dict:
    batch_sizes = {
        "benign": 1,
        "attacker-synthetic": args.attack_batch,
        "attacker-proxy": args.attack_batch,
    }
    config = {
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time": args.run_time,
        "weights": LocustMix.from_args(args).weights,
        "attack_batch": args.attack_batch,
        "attack_burst": args.attack_burst,
        "processes": args.processes,
        "serving": current_settings(args.repository),
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "locust_exit_codes": codes,
        "notes": "latency percentiles are Locust's (1 ms resolution below 100 ms, "
        "then rounded to 2 significant digits); images_per_s = requests_per_s x batch",
    }
    return {"config": config, **summarise(stats, batch_sizes, counters)}
