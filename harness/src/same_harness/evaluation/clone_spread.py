"""How much of a clone's accuracy is the training run, not the answers: the spread of clones
trained on the *same* queries and answers, seed by seed. Writes ``clone_spread.{json,md}``.

    python -m same_harness.evaluation.clone_spread                 # fonts, strokes, 8x8 digits
    python -m same_harness.evaluation.clone_spread --seeds 0 1 2 3 --sources fonts

A clone trained on look-alike data is judged on MNIST, where it extrapolates: the accuracy it
ends at moves with the order of its batches and its initialisation, so one seed's figure
(the account evaluation's "worst seed", a 50-account point of the cost-to-steal curve) can
differ from the next seed's by more than the effect it is meant to show. Each seed here
shuffles the thief's transfer set and initialises the clone; per source it trains on the
victim's probabilities, on its top-1 labels (what the review tier serves) and on the labels
the thief knows without asking (own labels), the account evaluation's clone settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..reporting.markdown import cell, table

SOURCES = ("fonts", "strokes", "digits8x8")
TARGETS = ("probs", "labels", "own")
log = logging.getLogger("same.evaluation.clone_spread")


def spread(
    repository: str, sources: tuple[str, ...], seeds: tuple[int, ...], budget: int = 4000
) -> dict:
    """Per source and target: the clone accuracy of every seed, and their mean, min, max."""
    from same_defense.core.score import softmax

    from ..attacks import CloneTrainer, clone_architecture
    from ..attacks.oracle import Answer
    from .accounts import AccountEvalConfig, own_labelled_data
    from .setup import context

    config = AccountEvalConfig(repository=repository, budget=budget)
    ctx = context(config.eval_config())
    rows = []
    for source in sources:
        images, own = own_labelled_data(ctx, f"knockoff-{source}", config.seeds[0])
        probs = softmax(ctx.graphs.run(images).logits).astype(np.float32)
        victim_answer = Answer(probs, probs.argmax(axis=1))  # seen as probs or as labels
        own_answer = Answer(np.eye(ctx.num_classes, dtype=np.float32)[own], own)
        victim = float((victim_answer.labels == own).mean())
        for target in TARGETS:
            accuracies = []
            for seed in seeds:
                order = np.random.default_rng(seed).permutation(len(images))
                trainer = CloneTrainer(
                    ctx.shape,
                    ctx.num_classes,
                    clone_architecture(ctx.manifest),
                    replace(config.clone, seed=seed),
                )
                a = own_answer if target == "own" else victim_answer
                answer = Answer(a.probs[order], a.labels[order])
                kind = "probs" if target == "probs" else "labels"
                clone = trainer.fit_answers(images[order], answer, kind)
                accuracies.append(ctx.clone_metrics(clone)["clone_accuracy"])
                log.info("%s %s seed %d: %.3f", source, target, seed, accuracies[-1])
            rows.append(
                {
                    "source": source,
                    "target": target,
                    "victim_accuracy_on_source": victim,
                    "accuracies": accuracies,
                    "mean": float(np.mean(accuracies)),
                    "min": float(np.min(accuracies)),
                    "max": float(np.max(accuracies)),
                }
            )
    return {"seeds": list(seeds), "epochs": config.clone.epochs, "budget": budget, "rows": rows}


def markdown_lines(report: dict) -> list[str]:
    out = [
        "# Clone accuracy: the spread of the training run",
        "",
        f"Same {report['budget']} queries and answers, seeds "
        f"{', '.join(map(str, report['seeds']))} (batch order and initialisation), "
        f"{report['epochs']} epochs; *own*: the labels the thief knows "
        "without asking.",
        "",
    ]
    out += table(
        "source|victim right on it|trained on|mean|min|max|per seed".split("|"),
        [
            [
                r["source"],
                cell(r["victim_accuracy_on_source"]),
                r["target"],
                cell(r["mean"]),
                cell(r["min"]),
                cell(r["max"]),
                ", ".join(cell(a) for a in r["accuracies"]),
            ]
            for r in report["rows"]
        ],
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--out", default="reports", help="folder for clone_spread.{json,md}")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--budget", type=int, default=4000, help="transfer-set images per source")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = spread(a.repository, tuple(a.sources), tuple(a.seeds), a.budget)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clone_spread.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "clone_spread.md").write_text("\n".join(markdown_lines(report)) + "\n")
    log.info("wrote %s", out / "clone_spread.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
