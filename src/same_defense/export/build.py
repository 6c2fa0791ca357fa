"""Build the served defense end to end: data -> victim -> MAE + shadow -> ONNX -> calibrate ->
Triton repository. ``python -m same_defense.export.build --help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..core.manifest import MANIFEST_NAME, load_verified_manifest
from ..data import source_from_manifest
from ..models import ReconstructorGraph
from ..serving.inprocess import GraphRunner
from . import build_args
from .build_stages import (
    build_record,
    calibrate_stage,
    data_stage,
    mae_stage,
    onnx_stage,
    repository_stage,
    shadow_stage,
    victim_stage,
)
from .calibration import calibrate
from .repository import ONNX_FILES, refresh_defense_code

# Epochs per preset: (victim, MAE, shadow).
EPOCHS = {"cpu": (12, 40, 12), "cifar-cpu": (15, 60, 10), "paper": (30, 500, 30), "tiny": (1, 1, 1)}
EPOCHS |= {name: EPOCHS["cpu"] for name in ("cpu-p7", "cpu-p7-lite", "cpu-lite", "cpu-mini")}


@dataclass
class BuildReport:
    """Stage times and figures of a build; prints the stage lines a person reads."""

    stages_s: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float | int | str] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        yield
        self.stages_s[name] = round(time.perf_counter() - start, 2)
        print(f"   {name} took {self.stages_s[name]:.1f}s", flush=True)

    def say(self, line: str) -> None:
        """Print a line of a stage (the stages in ``build_stages`` print nothing themselves)."""
        print(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_args.parse_args(argv, __doc__)


def build(args: argparse.Namespace) -> BuildReport:
    """Run the stages (``build_stages``) in order; write ``args.report`` and return it."""
    torch.manual_seed(args.train_seed)
    report = BuildReport()
    victim_epochs, mae_epochs, shadow_epochs = EPOCHS[args.preset]
    victim_epochs = args.victim_epochs or victim_epochs
    mae_epochs = args.mae_epochs or mae_epochs
    shadow_epochs = args.shadow_epochs or shadow_epochs
    args.artifacts.mkdir(parents=True, exist_ok=True)
    with report.stage("data"):
        data = data_stage(args, report)
    with report.stage("victim"):
        victim = victim_stage(args, data, victim_epochs, report)
    with report.stage("mae"):
        mae = mae_stage(args, data, mae_epochs)
    with report.stage("shadow"):
        shadow, shadow_arch = shadow_stage(args, data, victim, mae, shadow_epochs, report)
    with report.stage("onnx"):
        graph = ReconstructorGraph(mae, shadow).eval()
        recon_onnx = onnx_stage(args, graph, data.splits.calibration.images, report)
    with report.stage("calibrate"):
        calibration = calibrate_stage(args, GraphRunner(victim.onnx_path, recon_onnx), data, report)
    with report.stage("repository"):
        accuracy = report.figures["victim_test_accuracy"]
        record = build_record(args, data, victim, mae, shadow_arch, accuracy)
        repository_stage(args, data, victim, recon_onnx, calibration | record, report)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        json.dumps({"stages_s": report.stages_s, **report.figures}, indent=2) + "\n"
    )
    return report


def recalibrate(args: argparse.Namespace) -> dict:
    """Rewrite the calibration of an existing repository (the ONNX graphs are kept)."""
    manifest_path = args.repository / "defense" / "1" / MANIFEST_NAME
    manifest = load_verified_manifest(str(args.repository), str(manifest_path))
    source = source_from_manifest(manifest, args.data_root)
    splits = source.split()
    manifest["data"] = source.to_manifest()  # where the data are now, if they moved
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
