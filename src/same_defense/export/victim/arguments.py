"""The victim and shadow options of ``same-build``: arguments, their consistency, their reading.

Only the command line lives here; what the options mean is :class:`.spec.Preprocessing`
and :class:`.spec.VictimOptions`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...models import PRESETS, SHADOW_ONLY_ARCHITECTURES, VICTIM_ARCHITECTURES
from .spec import CHANNEL_ORDERS, LAYOUTS, OUTPUT_KINDS, Preprocessing, VictimOptions

SHADOW_CHOICES = ("auto", *VICTIM_ARCHITECTURES, *SHADOW_ONLY_ARCHITECTURES)
# `--shadow-arch auto` for a trained victim at a preset with `small_shadow`: the smaller shadow.
SMALL_SHADOW = {"cnn3": "cnn3-small"}


def parse_channel_values(text: str) -> tuple[float, ...]:
    """argparse type for ``--victim-mean`` / ``--victim-std``: ``0.485,0.456,0.406``."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.485,0.456,0.406, got {text!r}"
        ) from None


def add_victim_arguments(parser: argparse.ArgumentParser) -> None:
    """The victim and shadow options of ``same-build`` (one group, documented in --help)."""
    g = parser.add_argument_group(
        "victim",
        "Where the protected classifier comes from. By default the build trains --victim-arch "
        "(or loads --victim-checkpoint into it). --victim-onnx / --victim-torch serve a "
        "provider's own classifier instead; its preprocessing is built into the served graph, "
        "which always reads float32 NCHW pixels in [0, 1] (RGB for 3 channels). Order: "
        "x * scale, channels reversed (bgr), (x - mean) / std per channel (values in the "
        "model's channel order), NHWC (nhwc), model, log(probs) (probs).",
    )
    source = g.add_mutually_exclusive_group()
    source.add_argument(
        "--victim-onnx", type=Path, help="protect this ONNX classifier (wrapped, not retrained)"
    )
    source.add_argument(
        "--victim-torch",
        metavar="MODULE:FACTORY",
        help="protect factory() -> nn.Module from MODULE (the current directory is importable), "
        "with the state dict --victim-checkpoint",
    )
    g.add_argument(
        "--victim-arch",
        choices=VICTIM_ARCHITECTURES,
        help="the project's architecture to train (or to load --victim-checkpoint into); "
        "None: cnn3",
    )
    g.add_argument(
        "--victim-checkpoint",
        type=Path,
        help="a state dict: for --victim-arch instead of training, or for --victim-torch",
    )
    g.add_argument("--victim-input-name", help="the ONNX input tensor; None: the only one")
    g.add_argument("--victim-output-name", help="the ONNX output tensor; None: the only one")
    g.add_argument(
        "--victim-scale", type=float, default=1.0, help="multiply [0, 1] pixels (255: 0-255)"
    )
    g.add_argument(
        "--victim-mean",
        type=parse_channel_values,
        metavar="M[,M...]",
        help="per-channel mean subtracted after scaling (1 value or one per channel)",
    )
    g.add_argument(
        "--victim-std",
        type=parse_channel_values,
        metavar="S[,S...]",
        help="per-channel std divided by after the mean (1 value or one per channel)",
    )
    g.add_argument(
        "--victim-channel-order",
        choices=CHANNEL_ORDERS,
        default="rgb",
        help="the channel order the model reads (3-channel images)",
    )
    g.add_argument(
        "--victim-layout", choices=LAYOUTS, default="nchw", help="the layout the model reads"
    )
    g.add_argument(
        "--victim-output",
        choices=OUTPUT_KINDS,
        default="logits",
        help="what the model answers; probs are served as log(probs), a valid logit vector",
    )
    g.add_argument(
        "--shadow-arch",
        choices=SHADOW_CHOICES,
        default="auto",
        help="SAME's shadow classifier; auto: the cheapest one measured to score as well: "
        "cnn3-small (cnn3 at a quarter of the width) for a provided victim and for a trained "
        "cnn3 at the cpu-lite preset, else the trained victim's architecture; the paper "
        "preset keeps the paper's choice; resnet18 below 8x8 images (docs/performance.md)",
    )
    g.add_argument(
        "--accept-low-accuracy",
        action="store_true",
        help="build even when a provided victim scores near chance on the data set's test "
        "images (by default the build stops there: the preprocessing is almost always wrong)",
    )


def victim_arguments_problem(args: argparse.Namespace) -> str | None:
    """A message for a contradictory combination of victim options, or None."""
    imported = args.victim_onnx or args.victim_torch
    custom = [
        name
        for name, value, default in (
            ("--victim-scale", args.victim_scale, 1.0),
            ("--victim-mean", args.victim_mean, None),
            ("--victim-std", args.victim_std, None),
            ("--victim-channel-order", args.victim_channel_order, "rgb"),
            ("--victim-layout", args.victim_layout, "nchw"),
            ("--victim-output", args.victim_output, "logits"),
        )
        if value != default
    ]
    if not imported and custom:
        return (
            f"{', '.join(custom)} describe a provided victim: use them with --victim-onnx or "
            "--victim-torch (the project's own architectures read [0, 1] RGB NCHW directly)"
        )
    if imported and args.victim_arch:
        return (
            "--victim-arch names the project's architectures; it does not apply to "
            "--victim-onnx / --victim-torch (use --shadow-arch to choose SAME's shadow)"
        )
    if not args.victim_onnx and (args.victim_input_name or args.victim_output_name):
        return "--victim-input-name / --victim-output-name apply to --victim-onnx only"
    if args.victim_onnx and args.victim_checkpoint:
        return "--victim-checkpoint does not apply to --victim-onnx (the weights are in the file)"
    if args.victim_torch and not args.victim_checkpoint:
        return "--victim-torch needs --victim-checkpoint (the state dict for factory())"
    return None


def victim_options(args: argparse.Namespace) -> VictimOptions:
    """Read the parsed ``same-build`` arguments (checked by :func:`victim_arguments_problem`)."""
    kind = "onnx" if args.victim_onnx else "torch" if args.victim_torch else "trained"
    return VictimOptions(
        kind=kind,
        architecture=args.victim_arch or "cnn3",
        checkpoint=args.victim_checkpoint,
        onnx_path=args.victim_onnx,
        torch_factory=args.victim_torch,
        input_name=args.victim_input_name,
        output_name=args.victim_output_name,
        preprocessing=Preprocessing(
            scale=args.victim_scale,
            mean=tuple(args.victim_mean or ()),
            std=tuple(args.victim_std or ()),
            channel_order=args.victim_channel_order,
            layout=args.victim_layout,
        ),
        output=args.victim_output,
    )


def choose_shadow_architecture(
    requested: str, victim_architecture: str, shape: tuple[int, int, int], preset: str = ""
) -> str:
    """SAME's shadow only has to mimic the victim's answers, not match its (unknown) design.

    ``auto`` picks the cheapest shadow that measurement supports (:func:`shadow_reason` says
    why): the quarter-width cnn3-small, measured by `make variants` to score as well as the
    full-width shadows for a fraction of the cost (docs/performance.md), for a provided
    victim at every CPU preset and for a trained cnn3 at a ``small_shadow`` preset. A trained
    victim otherwise keeps the paper's choice (the victim's architecture), as does the paper
    preset. Images under 8x8 (three 2x poolings would leave nothing) get resnet18.
    """
    if requested != "auto":
        return requested
    fits_cnn3 = min(shape[1:]) >= 8
    if victim_architecture in VICTIM_ARCHITECTURES:
        if preset in PRESETS and PRESETS[preset].small_shadow:
            return SMALL_SHADOW.get(victim_architecture, victim_architecture)
        return victim_architecture
    if preset == "paper":
        return "cnn3" if 8 <= min(shape[1:]) < 32 else "resnet18"
    return "cnn3-small" if fits_cnn3 else "resnet18"


def shadow_reason(
    requested: str, victim_architecture: str, shape: tuple[int, int, int], preset: str = ""
) -> str:
    """Why :func:`choose_shadow_architecture` chose what it did, in a few words."""
    arch = choose_shadow_architecture(requested, victim_architecture, shape, preset)
    if requested != "auto":
        return "--shadow-arch"
    if arch == "resnet18" and min(shape[1:]) < 8:
        return f"auto: images of {shape[1]}x{shape[2]} are too small for cnn3"
    if arch == "cnn3-small":
        who = "a provided victim" if victim_architecture not in VICTIM_ARCHITECTURES else "cnn3"
        return (
            f"auto: the cheapest shadow measured to score as well, for {who} at the {preset} "
            "preset (`make variants`, docs/performance.md); --shadow-arch to choose another"
        )
    if victim_architecture in VICTIM_ARCHITECTURES:
        return "auto: the trained victim's own architecture, as in the paper"
    return "auto: the paper preset's choice by image size"
