"""What ``same-build`` will do and how long each stage will take on this machine.

The estimates are measured, not guessed: a few training steps of each model the build will
train (its architecture, its batch size, the same optimiser), an export of the untrained
reconstructor, and a batch scored through the exported graphs, scaled to the stage's number
of steps or images. Untrained weights cost the same as trained ones, so this takes seconds.
``same-build --check`` prints the plan and stops; a build prints it before training and puts
each stage's estimate on the stage's line (also with ``--quiet``).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import PRESETS, MaskedAutoencoder, ReconstructorGraph, build_classifier
from ..models import fit_to_shape as fit_mae
from ..runtime.inprocess import GraphRunner
from ..train.loops import random_shift
from .build_args import BuildConfig
from .onnx_export import RECONSTRUCTOR_IO, VICTIM_IO, export_onnx

# Steps timed per model after WARMUP_STEPS untimed ones: a new model's first steps allocate
# and pick kernels, and measured up to 3x slower than the rest on 2 cores.
WARMUP_STEPS, TIMED_STEPS = 2, 3
VICTIM_BATCH, MAE_BATCH, SHADOW_BATCH = 64, 128, 64  # as build_stages trains them
ONNX_CHECK_IMAGES = 512  # build_stages.onnx_stage compares PyTorch and onnxruntime on these


@dataclass(frozen=True)
class StageEstimate:
    """One stage of the plan: what it does and its estimated (or measured) seconds."""

    name: str
    what: str
    seconds: float | None = None  # None: nothing to estimate (e.g. a checkpoint is loaded)
    done: bool = False  # measured: the stage already ran (data, a provided victim's checks)


@dataclass(frozen=True)
class PlanInputs:
    """What the plan needs to know of the build (see :func:`estimate_plan`)."""

    shape: tuple[int, int, int]
    classes: int
    images: np.ndarray  # training images (a few batches are timed on them)
    n_train: int
    n_calibration: int
    n_test: int
    epochs: tuple[int, int, int]  # victim, MAE, shadow
    victim_trains: bool
    victim_architecture: str  # the project's architecture, or "provided"
    victim_onnx: Path | None  # the served victim graph when it exists already
    shadow_architecture: str


def format_seconds(seconds: float | None) -> str:
    """``42 s``, ``3 min 10 s``, ``1 h 05 min``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return "< 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], device: torch.device, steps: int = TIMED_STEPS) -> float:
    """Median seconds per call of ``step`` after the warm-up calls (the median: a step that
    another process on the same cores delayed does not set the estimate)."""
    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _batch(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images[:size])).to(device)


def victim_step_seconds(arch: str, inputs: PlanInputs, device: torch.device) -> float:
    """One training step of the victim (cross-entropy, Adam, shifted batch)."""
    model = build_classifier(arch, inputs.shape, inputs.classes).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _batch(inputs.images, VICTIM_BATCH, device)
    labels = torch.zeros(len(x), dtype=torch.int64, device=device)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = F.cross_entropy(model(random_shift(x.cpu(), 2, gen).to(device)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return time_steps(step, device)


def mae_step_seconds(mae: MaskedAutoencoder, inputs: PlanInputs, device: torch.device) -> float:
    """One training step of the MAE (masked reconstruction, AdamW)."""
    mae.to(device).train()
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-3, betas=(0.9, 0.95))
    x = _batch(inputs.images, MAE_BATCH, device)

    def step() -> None:
        loss = F.mse_loss(mae.forward_masked(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = time_steps(step, device)
    mae.to("cpu").eval()
    return seconds


def shadow_step_seconds(
    mae: MaskedAutoencoder, shadow: torch.nn.Module, inputs: PlanInputs, device: torch.device
) -> float:
    """One training step of the shadow: reconstructions (half masked), then KL, Adam."""
    mae.to(device).eval()
    shadow.to(device).train()
    optimizer = torch.optim.Adam(shadow.parameters(), lr=1e-3)
    x = _batch(inputs.images, SHADOW_BATCH, device)
    target = torch.full((len(x), inputs.classes), 1.0 / inputs.classes, device=device)

    def step() -> None:
        with torch.no_grad():
            recon = torch.cat([mae.forward_masked(x[::2]), mae.reconstruct(x[1::2])])
        loss = F.kl_div(F.log_softmax(shadow(recon), 1), target, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = time_steps(step, device)
    mae.to("cpu")
    shadow.to("cpu").eval()
    return seconds


def _graph_seconds(
    graph: ReconstructorGraph, victim_onnx: Path, images: np.ndarray, work: Path
) -> tuple[float, float, float]:
    """Export seconds, then seconds per image for the ONNX check and for calibration."""
    start = time.perf_counter()
    recon_onnx = export_onnx(graph, images[:2], work / "reconstructor.onnx", RECONSTRUCTOR_IO)
    export_s = time.perf_counter() - start
    runner = GraphRunner(victim_onnx, recon_onnx)
    runner.run(images[:8])  # warm-up
    start = time.perf_counter()
    runner.run(images)
    score_per_image = (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    with torch.no_grad():
        graph(torch.from_numpy(np.ascontiguousarray(images)))
    torch_per_image = (time.perf_counter() - start) / len(images)
    # The check runs the reconstructor in PyTorch and in onnxruntime (about half of scoring).
    return export_s, torch_per_image + score_per_image / 2, score_per_image


def _untrained_victim_onnx(inputs: PlanInputs, work: Path) -> Path:
    arch = inputs.victim_architecture
    model = build_classifier(arch, inputs.shape, inputs.classes).eval()
    return export_onnx(model, inputs.images[:2], work / "victim.onnx", VICTIM_IO)


def estimate_plan(
    config: BuildConfig, inputs: PlanInputs, data_seconds: float, victim_what: str
) -> list[StageEstimate]:
    """The stages after the data stage with their estimated seconds (see the module doc).

    The build's random state is left as it was: the timed steps draw from a forked one.
    """
    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        work = Path(tmp)
        victim_epochs, mae_epochs, shadow_epochs = inputs.epochs
        stages = [StageEstimate("data", data_what(inputs), data_seconds, done=True)]
        stages.append(_victim_estimate(config, inputs, device, victim_what, victim_epochs))
        mae = MaskedAutoencoder(inputs.shape, fit_mae(PRESETS[config.preset].mae, inputs.shape))
        mae_steps = mae_epochs * math.ceil(inputs.n_train / MAE_BATCH)
        mae_what = (
            f"load the MAE {config.mae_checkpoint}"
            if config.mae_checkpoint
            else f"train the {config.preset} MAE (patch {mae.config.patch}, width "
            f"{mae.config.embed}): {mae_epochs} epochs x "
            f"{math.ceil(inputs.n_train / MAE_BATCH)} batches of {MAE_BATCH}"
        )
        mae_s = None if config.mae_checkpoint else mae_steps * mae_step_seconds(mae, inputs, device)
        stages.append(StageEstimate("mae", mae_what, mae_s))
        shadow = build_classifier(inputs.shadow_architecture, inputs.shape, inputs.classes)
        shadow_batches = math.ceil(inputs.n_train / SHADOW_BATCH)
        shadow_s = shadow_epochs * shadow_batches * shadow_step_seconds(mae, shadow, inputs, device)
        stages.append(
            StageEstimate(
                "shadow",
                f"train the {inputs.shadow_architecture} shadow on reconstructions: "
                f"{shadow_epochs} epochs x {shadow_batches} batches of {SHADOW_BATCH}",
                shadow_s,
            )
        )
        victim_onnx = inputs.victim_onnx or _untrained_victim_onnx(inputs, work)
        sample = inputs.images[: min(256, len(inputs.images))]
        graph = ReconstructorGraph(mae, shadow).eval()
        export_s, check_per_image, score_per_image = _graph_seconds(
            graph, victim_onnx, sample, work
        )
        checked = min(ONNX_CHECK_IMAGES, inputs.n_calibration)
        variant = "" if config.reconstructor_variant == "float32" else " (+ the variant's rewrite)"
        stages.append(
            StageEstimate(
                "onnx",
                f"export the reconstructor, check it on {checked} images{variant}",
                export_s + checked * check_per_image,
            )
        )
        scored = inputs.n_calibration + inputs.n_test
        stages.append(
            StageEstimate(
                "calibrate",
                f"score {scored} calibration and test images, threshold at FPR {config.target_fpr}",
                scored * score_per_image,
            )
        )
    stages.append(StageEstimate("repository", f"write {config.repository}", None))
    return stages


def _victim_estimate(
    config: BuildConfig,
    inputs: PlanInputs,
    device: torch.device,
    what: str,
    epochs: int,
) -> StageEstimate:
    if not inputs.victim_trains:
        return StageEstimate("victim", what, None)
    batches = math.ceil(inputs.n_train / VICTIM_BATCH)
    per_step = victim_step_seconds(inputs.victim_architecture, inputs, device)
    return StageEstimate(
        "victim",
        f"{what}: {epochs} epochs x {batches} batches of {VICTIM_BATCH}",
        epochs * batches * per_step,
    )


def data_what(inputs: PlanInputs) -> str:
    return (
        f"{inputs.n_train} train / {inputs.n_calibration} calibration / {inputs.n_test} test "
        f"images of shape {inputs.shape}, {inputs.classes} classes"
    )


def plan_lines(stages: list[StageEstimate], config: BuildConfig) -> list[str]:
    """The plan as the lines ``same-build`` prints."""
    lines = ["== plan (times measured from a few batches on this machine)"]
    for s in stages:
        prefix = "done in " if s.done else "~ "
        when = "-" if s.seconds is None else prefix + format_seconds(s.seconds)
        lines.append(f"   {s.name:<10} {when:<16} {s.what}")
    todo = sum(s.seconds or 0.0 for s in stages if not s.done)
    lines.append(f"   {'total':<10} ~ {format_seconds(todo):<14} still to run")
    for label, path in (
        ("repository", config.repository),
        ("artifacts", config.artifacts),
        ("report", config.report),
    ):
        lines.append(f"   {label + ':':<11} {Path(path).resolve()}")
    return lines
