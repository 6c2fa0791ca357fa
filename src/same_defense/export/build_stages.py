"""The stages of ``same-build`` (``same_defense.export.build``): data, victim, MAE, shadow, ONNX
export and check, calibration, repository. Each takes and returns plain values; the stage
lines they print go through :meth:`BuildReport.say`, and :meth:`BuildReport.stage` times them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core import softmax
from ..data import DataSource, ImageSet, Splits, load_dataset
from ..models import (
    PRESETS,
    MaskedAutoencoder,
    ReconstructorGraph,
    build_classifier,
    fit_to_shape,
)
from ..runtime.inprocess import GraphRunner
from ..train import TrainConfig, train_classifier, train_mae, train_shadow
from .build_args import BuildConfig
from .build_plan import StageEstimate, format_seconds
from .calibration import calibrate
from .model_configs import ServingSettings
from .onnx_export import RECONSTRUCTOR_IO, export_onnx, max_abs_difference, reconstructor_variant
from .repository import write_repository
from .victim.checks import (
    chance_warning,
    check_victim_graph,
    output_kind_problem,
    suggest_preprocessing,
    victim_answers,
    warn_if_near_chance,
)
from .victim.onnx_wrap import import_onnx_victim
from .victim.spec import PreparedVictim, trained_victim_source
from .victim.torch_wrap import export_torch_victim, import_torch_victim, load_state_dict

ONNX_TOLERANCE = 1e-3


@dataclass
class BuildReport:
    """Stage times and figures of a build; prints the stage lines a person reads."""

    stages_s: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float | int | str] = field(default_factory=dict)
    estimates: dict[str, StageEstimate] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        # One line per stage with its estimate, also with --quiet: the line a person
        # watching a five-minute stage needs (the progress bars are the detail).
        estimate = self.estimates.get(name)
        when = f" (~ {format_seconds(estimate.seconds)})" if estimate and estimate.seconds else ""
        what = f": {estimate.what}" if estimate else ""
        print(f"== {name}{when}{what}", flush=True)
        start = time.perf_counter()
        yield
        self.stages_s[name] = round(time.perf_counter() - start, 2)
        print(f"   {name} took {self.stages_s[name]:.1f}s", flush=True)

    def say(self, line: str) -> None:
        """Print a line of a stage (the stages in ``build_stages`` print nothing themselves)."""
        print(line, flush=True)


@dataclass(frozen=True)
class BuildData:
    """What the data stage hands on: the fingerprinted source, its splits, the training set."""

    source: DataSource
    splits: Splits
    train: ImageSet  # splits.train, capped at --max-train

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.train.input_shape

    @property
    def classes(self) -> int:
        return len(self.train.class_names)


def data_stage(config: BuildConfig, report: BuildReport) -> BuildData:
    """Load the data set and split it (train, calibration, test) as the manifest records."""
    source = DataSource.at_build(config.data, config.data_root, config.seed)
    data = load_dataset(source.name, source.root)
    source = source.fitted_to(data)  # recorded: the tools find these data again
    splits = source.split(data)
    train = splits.train
    if config.max_train:
        train = train.subset(np.arange(min(config.max_train, len(train))), train.name)
    built = BuildData(source, splits, train)
    report.say(
        f"   {len(train)} train / {len(splits.calibration)} calibration / "
        f"{len(splits.test)} test images of shape {built.shape}, {built.classes} classes"
    )
    return built


def victim_stage(
    config: BuildConfig, data: BuildData, epochs: int, report: BuildReport
) -> PreparedVictim:
    """Train, load or import the victim and write the graph Triton will serve.

    Everything downstream (accuracy, the shadow's targets, calibration) reads that graph in
    onnxruntime, so a provided victim is checked on the provider's test images here, before
    minutes of MAE and shadow training are spent on its answers.
    """
    options = config.victim
    out = config.artifacts / "victim.onnx"
    train, test, shape, classes = data.train, data.splits.test, data.shape, data.classes
    example, check = data.splits.calibration.images[:2], data.splits.calibration.images[:512]
    if options.kind == "onnx":
        victim = import_onnx_victim(options, shape, classes, out)
    elif options.kind == "torch":
        victim = import_torch_victim(options, example, check, out, ONNX_TOLERANCE)
    else:
        model = build_classifier(options.architecture, shape, classes)
        if options.checkpoint:
            load_state_dict(model, options.checkpoint)
        else:
            cfg = TrainConfig(
                epochs=epochs,
                seed=config.train_seed,
                progress=not config.quiet,
                device=config.device,
            )
            train_classifier(model, train.images, train.labels, cfg)
        torch.save(model.eval().state_dict(), config.artifacts / "victim.pt")
        _, diff = export_torch_victim(model, example, check, out, ONNX_TOLERANCE)
        source = trained_victim_source(options)
        victim = PreparedVictim(out, options.architecture, source, onnx_max_abs_diff=diff)
    if victim.onnx_max_abs_diff is not None:
        report.figures["onnx_max_abs_diff_victim"] = victim.onnx_max_abs_diff
        report.say(f"   victim: ONNX vs PyTorch max |diff| = {victim.onnx_max_abs_diff:.2e}")
    check_victim_graph(out, test.images, classes)
    logits = victim_answers(out, test.images)
    kind = victim.source["kind"]
    if kind != "trained":  # our own victims answer logits; a provider's may not say
        problem = output_kind_problem(logits, options.output)
        if problem:
            raise ValueError(problem)
    acc = float((logits.argmax(axis=1) == test.labels).mean())
    report.figures["victim_test_accuracy"] = round(acc, 4)
    report.say(f"   victim ({kind}) test accuracy {acc:.4f}, served graph")
    low = chance_warning(acc, classes, kind)
    if low and kind != "trained" and not config.accept_low_accuracy:
        # Minutes of training on a misread model protect nothing: stop, and try the usual
        # mistakes (pixel scale, channel order) to name the fix.
        fix = suggest_preprocessing(options, data.shape, classes, test, acc)
        fix = (
            f"{fix}: pass that (or --accept-low-accuracy to build anyway)"
            if fix
            else "Fix the preprocessing, or pass --accept-low-accuracy to build anyway"
        )
        raise ValueError(f"{low}. {fix}")
    warn_if_near_chance(acc, classes, kind)
    return victim


def mae_stage(config: BuildConfig, data: BuildData, epochs: int) -> MaskedAutoencoder:
    """Train (or load --mae-checkpoint) the preset's MAE, fitted to the image shape."""
    mae = MaskedAutoencoder(data.shape, fit_to_shape(PRESETS[config.preset].mae, data.shape))
    if config.mae_checkpoint:
        mae.load_state_dict(torch.load(config.mae_checkpoint, weights_only=True))
    else:
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=128,
            lr=1e-3,
            weight_decay=0.05,
            seed=config.train_seed,
            progress=not config.quiet,
            augment_shift=1,
            device=config.device,
        )
        train_mae(mae, data.train.images, cfg, warmup_epochs=max(1, epochs // 10))
    torch.save(mae.state_dict(), config.artifacts / "mae.pt")
    return mae


def shadow_stage(
    config: BuildConfig,
    data: BuildData,
    victim: PreparedVictim,
    mae: MaskedAutoencoder,
    arch: str,
    epochs: int,
) -> torch.nn.Module:
    """Train the ``arch`` shadow on the MAE's reconstructions (build.shadow_architecture)."""
    # The victim's answers from the graph Triton serves, whatever the victim's origin.
    victim_probs = softmax(victim_answers(victim.onnx_path, data.train.images))
    shadow = build_classifier(arch, data.shape, data.classes)
    # SGD (authors) wants a larger step than Adam; the distilled shadow sees unshifted images.
    recipe = {"lr": 0.01} if config.shadow_recipe == "authors" else {"augment_shift": 0}
    cfg = TrainConfig(
        epochs=epochs,
        seed=config.train_seed,
        progress=not config.quiet,
        device=config.device,
        **recipe,
    )
    train = data.train
    train_shadow(shadow, mae, train.images, victim_probs, cfg, config.shadow_recipe, train.labels)
    torch.save(shadow.state_dict(), config.artifacts / "shadow.pt")
    return shadow


def onnx_stage(
    config: BuildConfig, graph: ReconstructorGraph, images: np.ndarray, report: BuildReport
) -> Path:
    """Export the reconstructor, check it against PyTorch on ``images``; return the served graph."""
    recon_onnx = export_onnx(
        graph, images[:2], config.artifacts / "reconstructor.onnx", RECONSTRUCTOR_IO
    )
    diff = max_abs_difference(graph, recon_onnx, images[:512])
    report.figures["onnx_max_abs_diff_reconstructor"] = diff
    report.say(f"   reconstructor: ONNX vs PyTorch max |diff| = {diff:.2e}")
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(f"reconstructor ONNX differs from PyTorch by {diff} > {ONNX_TOLERANCE}")
    if config.reconstructor_variant != "float32":  # checked above as float32; int8 differs
        variant = config.reconstructor_variant
        out = config.artifacts / f"reconstructor-{variant}.onnx"
        recon_onnx = reconstructor_variant(recon_onnx, variant, out, images[:256])
        report.say(f"   serving the {variant} reconstructor graph")
    return recon_onnx


def calibrate_stage(
    config: BuildConfig, graphs: GraphRunner, data: BuildData, report: BuildReport
) -> dict:
    """Threshold and account references of the served graphs, from the calibration split."""
    calibration = calibrate(
        graphs,
        data.splits.calibration.images,
        data.splits.test.images,
        config.alpha,
        config.target_fpr,
        data.classes,
    )
    report.figures.update(
        {k: calibration[k] for k in ("threshold", "calibration_fpr", "test_fpr_offline")}
    )
    report.say(
        f"   threshold {calibration['threshold']:.6g} at target FPR {config.target_fpr}; "
        f"offline test FPR {calibration['test_fpr_offline']:.4f}; account test "
        f"{calibration['accounts']['settings']}"
    )
    return calibration


def repository_stage(
    config: BuildConfig,
    data: BuildData,
    victim: PreparedVictim,
    recon_onnx: Path,
    manifest_fields: dict,
    report: BuildReport,
) -> Path:
    """Write the Triton repository and its manifest (``manifest_fields``); return its path."""
    settings = ServingSettings(
        input_shape=data.shape,
        num_classes=data.classes,
        class_names=tuple(data.train.class_names),
        policy=config.policy,
    )
    manifest = write_repository(
        config.repository,
        victim.onnx_path,
        recon_onnx,
        settings,
        manifest_fields,
        provided_victim=victim.provided_file,
    )
    report.say(f"   wrote {config.repository} (manifest {manifest})")
    return manifest


def build_record(
    config: BuildConfig,
    data: BuildData,
    victim: PreparedVictim,
    mae: MaskedAutoencoder,
    shadow_arch: str,
    accuracy: float,
) -> dict:
    """What the manifest records of the build, beside the calibration."""
    return {
        "input_shape": list(data.shape),
        "class_names": list(data.train.class_names),
        "dataset": config.data,
        "data": data.source.to_manifest(),
        "preset": config.preset,
        "mae": mae.config.to_dict(),
        "victim_architecture": victim.architecture,  # "provided" for imported victims
        "victim_source": victim.source,
        "shadow_architecture": shadow_arch,
        "shadow_recipe": config.shadow_recipe,
        "reconstructor_variant": config.reconstructor_variant,
        "victim_test_accuracy": accuracy,
        "seed": config.seed,
        "train_seed": config.train_seed,
    }
