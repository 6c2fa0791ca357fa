"""Score fidelity: the served recipe against the authors' (shadow recipe and pixel scaling).

``python -m same_harness.evaluation.recipes`` builds a second repository that shares the
victim and the MAE of ``--repository`` (from its build artifacts) but trains the shadow with
the authors' recipe (cross-entropy on true labels, SGD, shifts, masked reconstructions), then
reports per-query AUROC (attack queries against the benign test split) for both repositories
at the served ``a``, at the authors' ``a = 0.99`` on [-1, 1] pixels (``rescaled_alpha``) and
at ``a = 0`` (KL only, where the shadow matters most). Writes ``reports/recipes.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from same_defense.core.decision import DEFAULT_ALPHA, GraphArrays
from same_defense.core.layout import ONNX_FILES
from same_defense.core.manifest import is_built, read_manifest
from same_defense.core.score import rescaled_alpha, same_score
from same_defense.data import source_from_manifest
from same_defense.export.build import main as build_main
from same_defense.runtime.inprocess import GraphRunner
from same_harness.data.queries import QUERY_SOURCES, make_query_set

log = logging.getLogger("same.recipes")


def aurocs(repository: Path, queries: dict[str, np.ndarray], benign: np.ndarray) -> dict:
    runner = GraphRunner(
        repository / ONNX_FILES["victim"], repository / ONNX_FILES["reconstructor"]
    )
    alphas = {
        "served": DEFAULT_ALPHA,
        "authors_pixel_scale": rescaled_alpha(DEFAULT_ALPHA, 2.0),
        "kl_only": 0.0,
    }

    def score(out: GraphArrays, a: float) -> np.ndarray:
        return same_score(out.recon_error, out.logits, out.shadow_logits, a)

    ben = runner.run(benign)
    table: dict = {}
    for name, x in queries.items():
        out = runner.run(x)
        labels = np.r_[np.zeros(len(benign)), np.ones(len(x))]
        table[name] = {
            k: round(float(roc_auc_score(labels, np.r_[score(ben, a), score(out, a)])), 4)
            for k, a in alphas.items()
        }
    return table


def _same_victim(manifest: dict, repository: Path, artifacts: Path) -> list[str]:
    """Build options that give the authors' recipe the served repository's very victim."""
    if manifest["victim_architecture"] == "provided":
        # The served graph already takes [0, 1] NCHW images and answers logits, so it is a
        # provided victim that needs no preprocessing options.
        return ["--victim-onnx", str(repository / "victim" / "1" / "model.onnx")]
    return [
        "--victim-arch",
        manifest["victim_architecture"],
        "--victim-checkpoint",
        str(artifacts / "victim.pt"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="its build artifacts")
    p.add_argument("--work", type=Path, default=Path("artifacts/authors_recipe"))
    p.add_argument("--queries", type=int, default=2000, help="queries per attack-like set")
    p.add_argument("--output", type=Path, default=Path("reports/recipes.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = read_manifest(args.repository)
    authors = args.work / "model_repository"
    source = source_from_manifest(manifest)
    if not is_built(authors):
        log.info("training the authors' shadow on %s's victim and MAE", args.repository)
        data = ["--data", source.name] + (["--data-root", source.root] if source.root else [])
        build_main(
            [
                *data,
                *_same_victim(manifest, args.repository, args.artifacts),
                "--quiet",
                "--mae-checkpoint",
                str(args.artifacts / "mae.pt"),
                "--shadow-recipe",
                "authors",
                "--shadow-arch",
                manifest.get("shadow_architecture", "auto"),
                "--preset",
                manifest["preset"],
                "--repository",
                str(authors),
                "--artifacts",
                str(args.work / "artifacts"),
                "--report",
                str(args.work / "build.json"),
                "--seed",
                str(manifest["seed"]),
            ]
        )
    shape = tuple(manifest["input_shape"])
    benign = source.split().test.images
    queries = {s: make_query_set(s, args.queries, shape, seed=0) for s in QUERY_SOURCES}
    report = {
        "benign": "test split",
        "queries_per_set": args.queries,
        "recipes": {
            "distill (served)": aurocs(args.repository, queries, benign),
            "authors": aurocs(authors, queries, benign),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for recipe, table in report["recipes"].items():
        for name, row in table.items():
            figures = "  ".join(f"{k} {v:.4f}" for k, v in row.items())
            log.info("%-18s %-10s %s", recipe, name, figures)
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
