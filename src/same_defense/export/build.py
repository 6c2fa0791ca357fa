"""Build the served defense end to end: data -> victim -> MAE + shadow -> ONNX -> calibrate ->
Triton repository. ``--check`` runs every check on the data and the victim and prints the
plan with each stage's time on this machine, in seconds, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..cli_errors import CommandError, run_command, wants_debug
from ..core.layout import MANIFEST_FILE, ONNX_FILES
from ..core.manifest import is_built, load_verified_manifest, manifest_path
from ..data import source_from_manifest
from ..data.datasets import load_unlabelled_images
from ..models import PRESETS, ReconstructorGraph
from ..runtime.inprocess import GraphRunner
from . import build_args
from .build_plan import PlanInputs, StageEstimate, estimate_plan, format_seconds, plan_lines
from .build_stages import (
    BuildData,
    BuildReport,
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
from .repository import refresh_defense_code, write_manifest
from .victim.arguments import choose_shadow_architecture, shadow_reason, victim_options
from .victim.spec import PreparedVictim


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_args.parse_args(argv, __doc__)


def stage_epochs(args: argparse.Namespace) -> tuple[int, int, int]:
    """(victim, MAE, shadow) epochs: the preset's, unless given on the command line."""
    victim, mae, shadow = PRESETS[args.preset].epochs
    return (args.victim_epochs or victim, args.mae_epochs or mae, args.shadow_epochs or shadow)


def victim_trains(args: argparse.Namespace) -> bool:
    """Whether the victim stage trains (minutes) rather than checks a given model (seconds)."""
    return not (args.victim_onnx or args.victim_torch or args.victim_checkpoint)


def existing_build(repository: Path) -> Path | None:
    """A file that shows ``repository`` holds a built defense (the tracked configs do not)."""
    for rel in (MANIFEST_FILE, *ONNX_FILES.values()):
        if (repository / rel).exists():
            return repository / rel
    return None


def refuse_overwrite(args: argparse.Namespace) -> None:
    """CommandError unless the repository is new or ``--force`` says to replace it."""
    found = existing_build(args.repository)
    if found is not None and not args.force:
        raise CommandError(
            f"{args.repository} already holds a built repository ({found} exists); pass "
            "--force to replace it, or --repository to build somewhere else"
        )


def shadow_architecture(args: argparse.Namespace, data: BuildData) -> tuple[str, str]:
    """The shadow's architecture for this build, and why (printed with the plan)."""
    options = victim_options(args)
    victim_arch = options.architecture if options.kind == "trained" else "provided"
    arch = choose_shadow_architecture(args.shadow_arch, victim_arch, data.shape, args.preset)
    return arch, shadow_reason(args.shadow_arch, victim_arch, data.shape, args.preset)


def plan_stages(
    args: argparse.Namespace,
    data: BuildData,
    report: BuildReport,
    victim: PreparedVictim | None,
    shadow_arch: str,
) -> list[StageEstimate]:
    """Measure the plan (``build_plan``), print it and keep it for the stage lines."""
    options = victim_options(args)
    if victim is None:
        what = f"train the {options.architecture} victim"
    else:
        source = victim.source
        what = f"{source['kind']} victim {source.get('file') or options.architecture}"
        what += f", test accuracy {report.figures['victim_test_accuracy']:.4f}"
    inputs = PlanInputs(
        shape=data.shape,
        classes=data.classes,
        images=data.train.images,
        n_train=len(data.train),
        n_calibration=len(data.splits.calibration),
        n_test=len(data.splits.test),
        epochs=stage_epochs(args),
        victim_trains=victim is None,
        victim_architecture=options.architecture,
        victim_onnx=victim.onnx_path if victim is not None else None,
        shadow_architecture=shadow_arch,
    )
    stages = estimate_plan(args, inputs, report.stages_s["data"], what)
    if victim is not None:  # it ran already: its measured time
        stages[1] = StageEstimate("victim", what, report.stages_s["victim"], done=True)
    for line in plan_lines(stages, args):
        report.say(line)
    report.estimates = {s.name: s for s in stages}
    report.figures["estimated_s"] = round(sum(s.seconds or 0 for s in stages if not s.done), 1)
    return stages


def prepare(args: argparse.Namespace, report: BuildReport) -> tuple[BuildData, PreparedVictim]:
    """Data, the victim and the plan: the stages that check the provider's files."""
    with report.stage("data"):
        data = data_stage(args, report)
    shadow_arch, why = shadow_architecture(args, data)
    report.figures["shadow_architecture"] = shadow_arch
    report.say(f"   shadow: {shadow_arch} ({why})")
    epochs = stage_epochs(args)
    if victim_trains(args):
        plan_stages(args, data, report, None, shadow_arch)
        with report.stage("victim"):
            victim = victim_stage(args, data, epochs[0], report)
    else:  # checked first (seconds): the plan then times the provider's real graph
        with report.stage("victim"):
            victim = victim_stage(args, data, epochs[0], report)
        plan_stages(args, data, report, victim, shadow_arch)
    return data, victim


def check(args: argparse.Namespace) -> BuildReport:
    """``--check``: the data and victim checks and the plan; nothing is written."""
    report = BuildReport()
    found = existing_build(args.repository)
    with tempfile.TemporaryDirectory(prefix="same-build-check-") as tmp:
        scratch = argparse.Namespace(**{**vars(args), "artifacts": Path(tmp)})
        torch.manual_seed(args.train_seed)
        with report.stage("data"):
            data = data_stage(scratch, report)
        shadow_arch, why = shadow_architecture(args, data)
        report.say(f"   shadow: {shadow_arch} ({why})")
        victim = None
        if not victim_trains(args):
            with report.stage("victim"):
                victim = victim_stage(scratch, data, 0, report)
        plan_stages(args, data, report, victim, shadow_arch)  # args: the real outputs
    if found is not None and not args.force:
        report.say(
            f"note: {args.repository} already holds a built repository; the build will refuse "
            "to replace it without --force"
        )
    report.say("check passed: nothing was written; run the same command without --check to build")
    return report


def build(args: argparse.Namespace) -> BuildReport:
    """Run the stages (``build_stages``) in order; write ``args.report`` and return it."""
    refuse_overwrite(args)
    torch.manual_seed(args.train_seed)
    report = BuildReport()
    _, mae_epochs, shadow_epochs = stage_epochs(args)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    data, victim = prepare(args, report)
    shadow_arch = str(report.figures["shadow_architecture"])
    with report.stage("mae"):
        mae = mae_stage(args, data, mae_epochs)
    with report.stage("shadow"):
        shadow = shadow_stage(args, data, victim, mae, shadow_arch, shadow_epochs)
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
    total = sum(report.stages_s.values())
    report.say(f"built {args.repository} in {format_seconds(total)}; report {args.report}")
    return report


def recalibrate(args: argparse.Namespace) -> dict:
    """Rewrite the calibration of an existing repository (the ONNX graphs are kept)."""
    if not is_built(args.repository):
        raise CommandError(
            f"--recalibrate: {manifest_path(args.repository)} is missing; build the repository "
            "first (same-build without --recalibrate, or make repository), or point --repository "
            "at one"
        )
    manifest = load_verified_manifest(args.repository)
    source = source_from_manifest(manifest, args.data_root)
    splits = source.split()
    manifest["data"] = source.to_manifest()  # where the data are now, if they moved
    runner = GraphRunner(
        args.repository / ONNX_FILES["victim"], args.repository / ONNX_FILES["reconstructor"]
    )
    calibration_images = splits.calibration.images
    # Images added to an earlier calibration stay in it unless new ones are given.
    extra_paths = args.calibration_extra or [
        Path(e["path"]) for e in manifest.get("calibration_extra", [])
    ]
    if extra_paths:
        shape = tuple(manifest["input_shape"])
        try:
            extra = [load_unlabelled_images(p, shape) for p in extra_paths]
        except (OSError, ValueError) as exc:
            raise CommandError(f"--calibration-extra: {exc}") from None
        calibration_images = np.concatenate([calibration_images, *extra])
        manifest["calibration_extra"] = [
            {"path": str(Path(p).resolve()), "images": len(x)}
            for p, x in zip(extra_paths, extra, strict=True)
        ]
    manifest |= calibrate(
        runner,
        calibration_images,
        splits.test.images,
        args.alpha,
        args.target_fpr,
        len(manifest["class_names"]),
    )
    write_manifest(args.repository, manifest)
    refresh_defense_code(args.repository)
    print(
        f"recalibrated {args.repository}: alpha {args.alpha}, threshold {manifest['threshold']:.6g}"
    )
    return manifest


def _quiet_onnxruntime() -> None:
    # onnxruntime's own warnings (e.g. about a provider's unused initializers) would sit
    # above our one-line refusals; --debug keeps them.
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def run(argv: list[str] | None = None) -> int:
    """The build, raising its errors (``main`` turns them into one-line refusals)."""
    args = parse_args(argv)
    if not args.debug:
        _quiet_onnxruntime()
    if args.recalibrate:
        recalibrate(args)
    elif args.check:
        check(args)
    else:
        build(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``same-build``: a refusal prints one line and raises ``SystemExit(1)``.

    SystemExit rather than a return status: Python callers (``make demo``, the evaluation
    recipes) that ignore the status must stop too. ``--debug`` raises the error itself.
    """
    status = run_command("same-build", lambda: run(argv), wants_debug(argv))
    if status:
        raise SystemExit(status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
