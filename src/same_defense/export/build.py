"""Build the served defense end to end: data -> victim -> MAE + shadow -> ONNX -> calibrate ->
Triton repository. ``--check`` runs every check on the data and the victim and prints the
plan with each stage's time on this machine, in seconds, writing nothing.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
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
from .build_args import BuildConfig
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
from .victim.arguments import choose_shadow_architecture, shadow_reason
from .victim.spec import PreparedVictim


def parse_args(argv: list[str] | None = None) -> BuildConfig:
    return build_args.parse_args(argv, __doc__)


def stage_epochs(config: BuildConfig) -> tuple[int, int, int]:
    """(victim, MAE, shadow) epochs: the preset's, unless given on the command line."""
    victim, mae, shadow = PRESETS[config.preset].epochs
    return (
        config.victim_epochs or victim,
        config.mae_epochs or mae,
        config.shadow_epochs or shadow,
    )


def existing_build(repository: Path) -> Path | None:
    """A file that shows ``repository`` holds a built defense (the tracked configs do not)."""
    for rel in (MANIFEST_FILE, *ONNX_FILES.values()):
        if (repository / rel).exists():
            return repository / rel
    return None


def refuse_overwrite(config: BuildConfig) -> None:
    """CommandError unless the repository is new or ``--force`` says to replace it."""
    found = existing_build(config.repository)
    if found is not None and not config.force:
        raise CommandError(
            f"{config.repository} already holds a built repository ({found} exists); pass "
            "--force to replace it, or --repository to build somewhere else"
        )


def shadow_architecture(config: BuildConfig, data: BuildData) -> tuple[str, str]:
    """The shadow's architecture for this build, and why (printed with the plan)."""
    options = config.victim
    victim_arch = options.architecture if options.kind == "trained" else "provided"
    arch = choose_shadow_architecture(config.shadow_arch, victim_arch, data.shape, config.preset)
    return arch, shadow_reason(config.shadow_arch, victim_arch, data.shape, config.preset)


def plan_stages(
    config: BuildConfig,
    data: BuildData,
    report: BuildReport,
    victim: PreparedVictim | None,
    shadow_arch: str,
) -> list[StageEstimate]:
    """Measure the plan (``build_plan``), print it and keep it for the stage lines."""
    options = config.victim
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
        epochs=stage_epochs(config),
        victim_trains=victim is None,
        victim_architecture=options.architecture,
        victim_onnx=victim.onnx_path if victim is not None else None,
        shadow_architecture=shadow_arch,
    )
    stages = estimate_plan(config, inputs, report.stages_s["data"], what)
    if victim is not None:  # it ran already: its measured time
        stages[1] = StageEstimate("victim", what, report.stages_s["victim"], done=True)
    for line in plan_lines(stages, config):
        report.say(line)
    report.estimates = {s.name: s for s in stages}
    report.figures["estimated_s"] = round(sum(s.seconds or 0 for s in stages if not s.done), 1)
    return stages


def prepare(config: BuildConfig, report: BuildReport) -> tuple[BuildData, PreparedVictim]:
    """Data, the victim and the plan: the stages that check the provider's files."""
    with report.stage("data"):
        data = data_stage(config, report)
    shadow_arch, why = shadow_architecture(config, data)
    report.figures["shadow_architecture"] = shadow_arch
    report.say(f"   shadow: {shadow_arch} ({why})")
    epochs = stage_epochs(config)
    if config.trains_victim:
        plan_stages(config, data, report, None, shadow_arch)
        with report.stage("victim"):
            victim = victim_stage(config, data, epochs[0], report)
    else:  # checked first (seconds): the plan then times the provider's real graph
        with report.stage("victim"):
            victim = victim_stage(config, data, epochs[0], report)
        plan_stages(config, data, report, victim, shadow_arch)
    return data, victim


def check(config: BuildConfig) -> BuildReport:
    """``--check``: the data and victim checks and the plan; nothing is written."""
    report = BuildReport()
    found = existing_build(config.repository)
    with tempfile.TemporaryDirectory(prefix="same-build-check-") as tmp:
        scratch = replace(config, artifacts=Path(tmp))
        torch.manual_seed(config.train_seed)
        with report.stage("data"):
            data = data_stage(scratch, report)
        shadow_arch, why = shadow_architecture(config, data)
        report.say(f"   shadow: {shadow_arch} ({why})")
        victim = None
        if not config.trains_victim:
            with report.stage("victim"):
                victim = victim_stage(scratch, data, 0, report)
        plan_stages(config, data, report, victim, shadow_arch)  # config: the real outputs
    if found is not None and not config.force:
        report.say(
            f"note: {config.repository} already holds a built repository; the build will refuse "
            "to replace it without --force"
        )
    report.say("check passed: nothing was written; run the same command without --check to build")
    return report


def build(config: BuildConfig) -> BuildReport:
    """Run the stages (``build_stages``) in order; write ``config.report`` and return it."""
    refuse_overwrite(config)
    torch.manual_seed(config.train_seed)
    report = BuildReport()
    _, mae_epochs, shadow_epochs = stage_epochs(config)
    config.artifacts.mkdir(parents=True, exist_ok=True)
    data, victim = prepare(config, report)
    shadow_arch = str(report.figures["shadow_architecture"])
    with report.stage("mae"):
        mae = mae_stage(config, data, mae_epochs)
    with report.stage("shadow"):
        shadow = shadow_stage(config, data, victim, mae, shadow_arch, shadow_epochs)
    with report.stage("onnx"):
        graph = ReconstructorGraph(mae, shadow).eval()
        recon_onnx = onnx_stage(config, graph, data.splits.calibration.images, report)
    with report.stage("calibrate"):
        calibration = calibrate_stage(
            config, GraphRunner(victim.onnx_path, recon_onnx), data, report
        )
    with report.stage("repository"):
        accuracy = report.figures["victim_test_accuracy"]
        record = build_record(config, data, victim, mae, shadow_arch, accuracy)
        repository_stage(config, data, victim, recon_onnx, calibration | record, report)
    config.report.parent.mkdir(parents=True, exist_ok=True)
    config.report.write_text(
        json.dumps({"stages_s": report.stages_s, **report.figures}, indent=2) + "\n"
    )
    total = sum(report.stages_s.values())
    report.say(f"built {config.repository} in {format_seconds(total)}; report {config.report}")
    return report


def recalibrate(config: BuildConfig) -> dict:
    """Rewrite the calibration of an existing repository (the ONNX graphs are kept)."""
    if not is_built(config.repository):
        raise CommandError(
            f"--recalibrate: {manifest_path(config.repository)} is missing; build the repository "
            "first (same-build without --recalibrate, or make repository), or point --repository "
            "at one"
        )
    manifest = load_verified_manifest(config.repository)
    source = source_from_manifest(manifest, config.data_root)
    splits = source.split()
    manifest["data"] = source.to_manifest()  # where the data are now, if they moved
    runner = GraphRunner(
        config.repository / ONNX_FILES["victim"], config.repository / ONNX_FILES["reconstructor"]
    )
    calibration_images = splits.calibration.images
    # Images added to an earlier calibration stay in it unless new ones are given.
    extra_paths = config.calibration_extra or [
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
        config.alpha,
        config.target_fpr,
        len(manifest["class_names"]),
    )
    write_manifest(config.repository, manifest)
    refresh_defense_code(config.repository)
    print(
        f"recalibrated {config.repository}: alpha {config.alpha}, "
        f"threshold {manifest['threshold']:.6g}"
    )
    return manifest


def _quiet_onnxruntime() -> None:
    # onnxruntime's own warnings (e.g. about a provider's unused initializers) would sit
    # above our one-line refusals; --debug keeps them.
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def run(argv: list[str] | None = None) -> int:
    """The build, raising its errors (``main`` turns them into one-line refusals)."""
    config = parse_args(argv)
    if not config.debug:
        _quiet_onnxruntime()
    if config.recalibrate:
        recalibrate(config)
    elif config.check:
        check(config)
    else:
        build(config)
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
