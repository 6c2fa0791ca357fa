"""The evaluation's plots: ROC and score histograms per attack, clone accuracy against queries."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the build machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import roc_points  # noqa: E402
from .report import DETECTOR_LABELS  # noqa: E402


def write_plots(report: dict, arrays: dict, out_dir: Path) -> list[Path]:
    paths = []
    benign = arrays["benign"]
    thresholds = arrays["thresholds"]
    for attack, scores in arrays["attacks"].items():
        fig, ax = plt.subplots(figsize=(5, 5))
        for det, label in DETECTOR_LABELS.items():
            if det in scores:
                fpr, tpr = roc_points(benign[det], scores[det])
                ax.plot(fpr, tpr, label=label)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(
            xlabel="false-positive rate (benign)",
            ylabel="true-positive rate (attack)",
            title=f"ROC: {attack}",
        )
        ax.legend(fontsize=7, loc="lower right")
        paths.append(_save(fig, out_dir / f"roc_{attack}.png"))

        fig, ax = plt.subplots(figsize=(6, 4))
        b, a = benign["same-a0.99"], scores["same-a0.99"]
        lo = max(min(b.min(), a.min()), 1e-6)
        bins = np.geomspace(lo, max(b.max(), a.max()) * 1.01, 60)
        ax.hist(b, bins=bins, alpha=0.6, density=True, label="benign test")
        ax.hist(a, bins=bins, alpha=0.6, density=True, label=attack)
        ax.axvline(thresholds["same-a0.99"], color="k", ls="--", label="threshold")
        ax.set_xscale("log")
        ax.set(xlabel="SAME score", ylabel="density", title=f"SAME scores: benign vs {attack}")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / f"hist_{attack}.png"))

    curves = report["curves"]
    attacks = list(dict.fromkeys(c["attack"] for c in curves))
    if attacks:
        cols = min(3, len(attacks))
        rows = -(-len(attacks) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
        for ax, attack in zip(axes.flat, attacks, strict=False):
            for c in curves:
                if c["attack"] != attack or c["defense"] not in ("none", "same-misinformation"):
                    continue
                q, acc = zip(*c["points"], strict=True)
                ax.plot(
                    q,
                    acc,
                    marker="o",
                    ms=3,
                    label=f"{c['defense']}, {c['output']}",
                    ls="-" if c["output"] == "probs" else "--",
                )
            ax.set(title=attack, xlabel="queries spent", ylabel="clone accuracy", ylim=(0, 1))
            ax.set_xlim(left=0)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(attacks) :]:
            ax.axis("off")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "clone_vs_queries.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
