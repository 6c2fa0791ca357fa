"""Bring your own victim: serve a provider's classifier behind SAME instead of one we train.

The served victim graph always reads the project's convention (float32 NCHW pixels in [0, 1],
RGB for 3 channels) as ``IMAGE`` and answers logits as ``LOGITS``: the reconstructor, the
defense step and every client share that convention. A provider's model usually wants
something else (0-255 pixels, ImageNet mean/std, BGR, NHWC, softmax outputs), so we put its
preprocessing *inside* the served graph, in this order::

    x in [0, 1], RGB, NCHW
    -> x * scale                       --victim-scale
    -> channels reversed if bgr        --victim-channel-order
    -> (x - mean) / std, per channel   --victim-mean / --victim-std (in the model's channel order)
    -> NHWC if asked                   --victim-layout
    -> provided model
    -> log(max(p, tiny)) if probs      --victim-output (the score and misinformation read logits)

One graph means one Triton model and no extra ensemble step. An ONNX victim is wrapped node by
node (its own graph untouched inside); a PyTorch victim is wrapped in a module and exported
with the project's :func:`export_onnx`. Either way the result is checked on the provider's
test images before anything is trained on its answers.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import AttributeProto, TensorProto, helper, numpy_helper
from torch import nn

from ..core.manifest import sha256_file
from ..models import VICTIM_ARCHITECTURES
from .onnx_export import VICTIM_IO, export_onnx, max_abs_difference, session

IMAGE, LOGITS = VICTIM_IO[0][0], VICTIM_IO[1][0]
CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
OUTPUT_KINDS = ("logits", "probs")
SHADOW_CHOICES = ("auto", *VICTIM_ARCHITECTURES)
# Smallest normal float32: log() of a probability that underflowed to 0 stays finite (-87.3)
# without reordering any class that the model still tells apart.
PROB_FLOOR = float(np.finfo(np.float32).tiny)
# Our wrapper uses broadcasting Mul/Sub/Div (opset 7) and Max (opset 8).
MIN_OPSET = 8
_FLOAT_INPUTS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Preprocessing:
    """What the provided model expects, relative to [0, 1] RGB NCHW (see the module doc)."""

    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    channel_order: str = "rgb"
    layout: str = "nchw"

    def validate(self, channels: int) -> None:
        """Raise ValueError naming the option to fix; ``channels`` is the data set's."""
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"--victim-scale must be a positive number, got {self.scale}")
        for option, values in (("--victim-mean", self.mean), ("--victim-std", self.std)):
            if values and len(values) not in (1, channels):
                raise ValueError(
                    f"{option} has {len(values)} values; the data set's images have {channels} "
                    f"channel(s): give 1 value or {channels}"
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{option} must be finite numbers, got {values}")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"--victim-std must be positive, got {self.std}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"--victim-channel-order must be one of {CHANNEL_ORDERS}")
        if self.channel_order == "bgr" and channels != 3:
            raise ValueError(f"--victim-channel-order bgr needs 3-channel images, not {channels}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--victim-layout must be one of {LAYOUTS}")

    def channel_values(
        self, values: tuple[float, ...], channels: int, default: float
    ) -> np.ndarray:
        """``values`` as a float32 [1, C, 1, 1] array (one value is repeated per channel)."""
        filled = values if len(values) == channels else (values or (default,)) * channels
        return np.asarray(filled, dtype=np.float32).reshape(1, channels, 1, 1)

    def model_input_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The per-image shape the provided model sees for data of ``shape`` (C, H, W)."""
        c, h, w = shape
        return (h, w, c) if self.layout == "nhwc" else (c, h, w)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class VictimOptions:
    """The victim options of ``same-build``; ``kind`` says where the victim comes from."""

    kind: str  # "trained" (the project's architectures), "torch" or "onnx"
    architecture: str = "cnn3"
    checkpoint: Path | None = None
    onnx_path: Path | None = None
    torch_factory: str | None = None
    input_name: str | None = None
    output_name: str | None = None
    preprocessing: Preprocessing = Preprocessing()
    output: str = "logits"


@dataclass(frozen=True)
class PreparedVictim:
    """The served victim graph and what the manifest records about where it came from."""

    onnx_path: Path  # IMAGE -> LOGITS, goes to victim/1/model.onnx
    architecture: str  # the project's architecture name, or "provided"
    source: dict  # the manifest's ``victim_source``
    provided_file: Path | None = None  # an ONNX victim, copied verbatim next to the wrapper
    onnx_max_abs_diff: float | None = None  # ONNX vs PyTorch, for victims we export ourselves


# ---------------------------------------------------------------- command line


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
        help="SAME's shadow classifier; auto: the victim's architecture when the build knows "
        "it, else cnn3 below 32x32 images and resnet18 from 32x32",
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
    requested: str, victim_architecture: str, shape: tuple[int, int, int]
) -> str:
    """SAME's shadow only has to mimic the victim's answers, not match its (unknown) design.

    ``auto`` keeps the paper's choice (the victim's architecture) when we trained it; for a
    provided victim it picks by image size: cnn3 suits small images (it needs 8x8 at least,
    three 2x poolings), resnet18 the CIFAR-sized ones and anything it cannot take.
    """
    if requested != "auto":
        return requested
    if victim_architecture in VICTIM_ARCHITECTURES:
        return victim_architecture
    smallest = min(shape[1:])
    return "cnn3" if 8 <= smallest < 32 else "resnet18"


# ---------------------------------------------------------------- ONNX victims


def load_onnx_model(path: Path) -> onnx.ModelProto:
    """Load and check the provided file; ValueError says why it is not a usable ONNX model."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--victim-onnx {path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not ONNX
        raise ValueError(f"--victim-onnx {path} is not a loadable ONNX model: {exc}") from None
    if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        # The repository keeps one verified file per model; external data would escape it.
        raise ValueError(
            f"--victim-onnx {path} keeps its weights in external files: save it as one file "
            "(onnx.save(model, path, save_as_external_data=False))"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ValueError(f"--victim-onnx {path} is not a valid ONNX model: {exc}") from None
    if _default_opset(model) < MIN_OPSET:
        raise ValueError(
            f"--victim-onnx {path} uses ONNX opset {_default_opset(model)}; re-export it with "
            f"opset {MIN_OPSET} or later"
        )
    return model


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions, default=0)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs that need a value (those backed by an initializer are constants with defaults)."""
    constants = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in constants]


def pick_tensor(names: list[str], requested: str | None, what: str, option: str) -> str:
    """``requested`` if the graph has it, else the only name; errors list the choices."""
    listed = ", ".join(repr(n) for n in names) or "none"
    if requested is not None:
        if requested not in names:
            raise ValueError(f"{option} {requested!r}: the model's {what}s are {listed}")
        return requested
    if len(names) != 1:
        raise ValueError(f"the model has {len(names)} {what}s ({listed}): choose one with {option}")
    return names[0]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Declared dims: ints where fixed, the symbol (or '?') where not."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def check_declared_input(
    value: onnx.ValueInfoProto, prep: Preprocessing, shape: tuple[int, int, int]
) -> None:
    """Compare the input's declared shape and type with what the wrapper will feed it.

    Runs before onnxruntime does, so the error names the option (layout, batch axis) rather
    than an onnxruntime shape message.
    """
    elem = value.type.tensor_type.elem_type
    if elem not in _FLOAT_INPUTS:
        raise ValueError(
            f"input {value.name!r} is {TensorProto.DataType.Name(elem)}; the served victim feeds "
            "floating-point pixels: export the model with a float input"
        )
    dims = _dims(value)
    expected = (prep.layout.upper(), *prep.model_input_shape(shape))
    if len(dims) != 4:
        raise ValueError(
            f"input {value.name!r} is declared {dims}: expected 4 dims, batch first "
            f"({expected[0]}: [N, {', '.join(map(str, expected[1:]))}])"
        )
    if isinstance(dims[0], int):
        raise ValueError(
            f"input {value.name!r} has a fixed batch dimension of {dims[0]}: re-export it with a "
            "dynamic batch axis (torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}))"
        )
    for got, want in zip(dims[1:], expected[1:], strict=True):
        if isinstance(got, int) and got != want:
            raise ValueError(
                f"input {value.name!r} is declared {dims} but the data set's images give "
                f"[N, {', '.join(map(str, expected[1:]))}] with --victim-layout "
                f"{prep.layout}: check --victim-layout or the data set"
            )


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name in ``graph`` and its subgraphs (If/Loop bodies see outer names)."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for sub in _subgraphs(node):
            names |= tensor_names(sub)
    names.discard("")  # the name of an omitted optional input
    return names


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename ``old`` everywhere in ``graph``, subgraphs included (``new`` must be unused)."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for sub in _subgraphs(node):
            rename_tensor(sub, old, new)


class _Names:
    """Fresh tensor names that collide with nothing in the provided graph."""

    def __init__(self, used: set[str]) -> None:
        self.used = set(used)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def _constant(names: _Names, base: str, value: np.ndarray) -> tuple[onnx.NodeProto, str]:
    # Constant nodes rather than initializers: valid for every IR version (old IRs want each
    # initializer listed as a graph input too).
    out = names.fresh(base)
    node = helper.make_node(
        "Constant",
        [],
        [out],
        name=names.fresh(f"same_{base}"),
        value=numpy_helper.from_array(value),
    )
    return node, out


def _preprocessing_nodes(
    prep: Preprocessing, channels: int, model_input: str, input_type: int, names: _Names
) -> list[onnx.NodeProto]:
    """Nodes from ``IMAGE`` ([0, 1] RGB NCHW) to the provided model's input tensor."""
    nodes: list[onnx.NodeProto] = []
    x = IMAGE

    def op(op_type: str, inputs: list[str], **attrs) -> None:
        nonlocal x
        out = names.fresh(f"same_pre_{op_type.lower()}")
        nodes.append(helper.make_node(op_type, inputs, [out], name=names.fresh(out), **attrs))
        x = out

    if prep.scale != 1.0:
        const, name = _constant(names, "same_scale", np.asarray(prep.scale, dtype=np.float32))
        nodes.append(const)
        op("Mul", [x, name])
    if prep.channel_order == "bgr":
        const, name = _constant(names, "same_bgr", np.asarray([2, 1, 0], dtype=np.int64))
        nodes.append(const)
        op("Gather", [x, name], axis=1)
    if prep.mean:
        mean = prep.channel_values(prep.mean, channels, 0.0)
        const, name = _constant(names, "same_mean", mean)
        nodes.append(const)
        op("Sub", [x, name])
    if prep.std:
        std = prep.channel_values(prep.std, channels, 1.0)
        const, name = _constant(names, "same_std", std)
        nodes.append(const)
        op("Div", [x, name])
    if prep.layout == "nhwc":
        op("Transpose", [x], perm=[0, 2, 3, 1])
    if input_type != TensorProto.FLOAT:
        op("Cast", [x], to=input_type)
    # The last node writes the provided model's (renamed) input tensor.
    if nodes:
        nodes[-1].output[0] = model_input
    else:
        nodes.append(helper.make_node("Identity", [x], [model_input], name=names.fresh("same_in")))
    return nodes


def _output_nodes(
    provided_output: str, output_type: int, output: str, names: _Names
) -> list[onnx.NodeProto]:
    """Nodes from the provided model's answer to ``LOGITS`` (float32 logits)."""
    nodes: list[onnx.NodeProto] = []
    x = provided_output
    if output_type != TensorProto.FLOAT:
        out = names.fresh("same_post_cast")
        nodes.append(helper.make_node("Cast", [x], [out], name=out, to=TensorProto.FLOAT))
        x = out
    if output == "probs":
        floor, floor_name = _constant(names, "same_prob_floor", np.float32(PROB_FLOOR))
        clipped = names.fresh("same_post_clipped")
        nodes += [
            floor,
            helper.make_node("Max", [x, floor_name], [clipped], name=clipped),
            helper.make_node("Log", [clipped], [LOGITS], name=names.fresh("same_post_log")),
        ]
    else:
        nodes.append(helper.make_node("Identity", [x], [LOGITS], name=names.fresh("same_out")))
    return nodes


def wrap_onnx_victim(
    model: onnx.ModelProto,
    shape: tuple[int, int, int],
    num_classes: int,
    prep: Preprocessing,
    output: str = "logits",
    input_name: str | None = None,
    output_name: str | None = None,
) -> tuple[onnx.ModelProto, str, str]:
    """The served victim graph ``IMAGE -> LOGITS`` around ``model``; also the chosen IO names.

    The provided nodes and weights are copied unchanged; only tensor names that collide with
    ours are renamed. Other outputs of the provided graph are dropped (Triton serves one).
    """
    prep.validate(shape[0])
    if output not in OUTPUT_KINDS:
        raise ValueError(f"--victim-output must be one of {OUTPUT_KINDS}, got {output!r}")
    inputs = graph_inputs(model)
    input_name = pick_tensor([i.name for i in inputs], input_name, "input", "--victim-input-name")
    outputs = [o.name for o in model.graph.output]
    output_name = pick_tensor(outputs, output_name, "output", "--victim-output-name")
    if len(inputs) > 1:
        others = ", ".join(repr(i.name) for i in inputs if i.name != input_name)
        raise ValueError(
            f"the model's inputs {others} have no default value; the served victim feeds only "
            f"the image ({input_name!r}): export the model with one input"
        )
    model_input = next(i for i in inputs if i.name == input_name)
    check_declared_input(model_input, prep, shape)
    output_info = next(o for o in model.graph.output if o.name == output_name)
    input_type = model_input.type.tensor_type.elem_type
    output_type = output_info.type.tensor_type.elem_type or TensorProto.FLOAT

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    names = _Names(tensor_names(graph) | {IMAGE, LOGITS})
    # IMAGE and LOGITS become our graph's IO: a provided tensor of that name moves aside.
    renamed = {}
    for reserved in (IMAGE, LOGITS):
        if reserved in tensor_names(graph):
            renamed[reserved] = names.fresh(f"provided_{reserved.lower()}")
            rename_tensor(graph, reserved, renamed[reserved])
    inner_input = names.fresh("provided_input")
    rename_tensor(graph, renamed.get(input_name, input_name), inner_input)
    inner_output = renamed.get(output_name, output_name)

    pre = _preprocessing_nodes(prep, shape[0], inner_input, input_type, names)
    post = _output_nodes(inner_output, output_type, output, names)
    nodes = [*pre, *graph.node, *post]  # topological order: ours first and last
    del graph.node[:]
    graph.node.extend(nodes)
    # Old IRs (< 4) list every initializer as a graph input too; from IR 4 such inputs would
    # be overridable, and the Triton backends want exactly the config's inputs.
    initialized = {t.name for t in graph.initializer}
    constants = [i for i in graph.input if i.name in initialized] if wrapped.ir_version < 4 else []
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, ["batch", *shape]))
    graph.input.extend(constants)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", num_classes])
    )
    try:
        onnx.checker.check_model(wrapped)
    except Exception as exc:  # a bug here, not the provider's: say so
        raise RuntimeError(f"the wrapped victim graph is not valid ONNX: {exc}") from exc
    return wrapped, input_name, output_name


def onnx_logits(path: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run the served victim graph (``IMAGE -> LOGITS``) in onnxruntime, batch by batch."""
    sess = session(path)
    parts = [
        sess.run([LOGITS], {IMAGE: np.ascontiguousarray(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def victim_answers(path: Path, images: np.ndarray) -> np.ndarray:
    """The served graph's logits on ``images``; ValueError if any is NaN or Inf.

    The accuracy and the shadow's training targets both come from here: a NaN among the
    targets would silently turn the shadow's loss into NaN.
    """
    logits = onnx_logits(path, images)
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if bad.size:
        raise ValueError(
            f"the victim answers NaN or Inf on {bad.size} of {len(images)} of the data set's "
            f"images (first: index {bad[0]}); check its preprocessing (with softmax outputs "
            "use --victim-output probs)"
        )
    return logits


def check_victim_graph(path: Path, images: np.ndarray, num_classes: int) -> None:
    """Run the served victim graph on batches of 1 and 3 of the provider's images.

    Catches what would otherwise surface as a Triton error under load, or worse, as a shadow
    trained on nonsense: a graph that does not run, a fixed batch size (Triton batches
    requests), a class count that differs from the data set's, NaN/Inf answers.
    """
    try:
        sess = session(path)
    except Exception as exc:
        raise ValueError(f"onnxruntime cannot load the victim graph {path}: {exc}") from None
    hint = (
        "check --victim-layout, --victim-channel-order and the data set's image size against "
        "what the model expects"
    )
    for n in (1, 3):
        x = np.ascontiguousarray(images[:n])
        try:
            out = sess.run([LOGITS], {IMAGE: x})[0]
        except Exception as exc:
            if n > 1:
                raise ValueError(
                    f"the victim runs on a batch of 1 image but not on a batch of {n}: its batch "
                    f"dimension is not dynamic (Triton batches requests); re-export it with a "
                    f"dynamic batch axis. onnxruntime said: {exc}"
                ) from None
            raise ValueError(
                f"the victim does not run on the data set's images after preprocessing ({hint}). "
                f"onnxruntime said: {exc}"
            ) from None
        if out.ndim == 2 and out.shape[0] != n:
            raise ValueError(
                f"the victim answers {out.shape[0]} rows for a batch of {n}: its batch dimension "
                "is not dynamic; re-export it with a dynamic batch axis"
            )
        if out.shape != (n, num_classes):
            raise ValueError(
                f"the victim's output has shape {list(out.shape)} for a batch of {n}; expected "
                f"[{n}, {num_classes}] for the data set's {num_classes} classes (wrong "
                "--victim-output-name, or a model for other classes?)"
            )
        if not np.isfinite(out).all():
            raise ValueError(
                f"the victim answers NaN or Inf on the data set's images ({hint}; with softmax "
                "outputs use --victim-output probs)"
            )


def import_onnx_victim(
    options: VictimOptions, shape: tuple[int, int, int], num_classes: int, out: Path
) -> PreparedVictim:
    """Wrap ``options.onnx_path`` into ``out``; the provided file is later copied verbatim."""
    path = Path(options.onnx_path)
    model = load_onnx_model(path)
    try:  # the provider's file on its own: separates "onnxruntime cannot run it" from our bugs
        session(path)
    except Exception as exc:
        raise ValueError(f"onnxruntime cannot load --victim-onnx {path}: {exc}") from None
    wrapped, input_name, output_name = wrap_onnx_victim(
        model,
        shape,
        num_classes,
        options.preprocessing,
        options.output,
        options.input_name,
        options.output_name,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(wrapped, str(out))
    source = {
        "kind": "onnx",
        "file": path.name,
        "sha256": sha256_file(str(path)),
        "input_name": input_name,
        "output_name": output_name,
        "preprocessing": options.preprocessing.to_dict(),
        "output": options.output,
    }
    return PreparedVictim(out, "provided", source, provided_file=path)


# ---------------------------------------------------------------- PyTorch victims


class PreprocessedClassifier(nn.Module):
    """A provider's ``nn.Module`` behind the same preprocessing the ONNX wrapper builds."""

    def __init__(self, model: nn.Module, prep: Preprocessing, output: str, channels: int) -> None:
        super().__init__()
        prep.validate(channels)
        self.model = model
        self.prep = prep
        self.probs = output == "probs"
        self.register_buffer("mean", torch.from_numpy(prep.channel_values(prep.mean, channels, 0)))
        self.register_buffer("std", torch.from_numpy(prep.channel_values(prep.std, channels, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Python-level conditions: the exported graph holds only the steps that do something.
        if self.prep.scale != 1.0:
            x = x * self.prep.scale
        if self.prep.channel_order == "bgr":
            x = x.flip(1)
        if self.prep.mean:
            x = x - self.mean
        if self.prep.std:
            x = x / self.std
        if self.prep.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        y = self.model(x)
        return torch.log(torch.clamp(y, min=PROB_FLOOR)) if self.probs else y


def load_torch_factory(spec: str) -> nn.Module:
    """Import ``module:factory`` (dotted names allowed after the colon) and call it."""
    module_name, sep, attribute = spec.partition(":")
    if not (sep and module_name and attribute):
        raise ValueError(
            f"--victim-torch expects MODULE:FACTORY (e.g. mymodels:make_classifier), got {spec!r}"
        )
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # the provider's code usually sits where they run same-build
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--victim-torch: cannot import {module_name!r} from {cwd}: {exc}"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    try:
        factory = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise ValueError(f"--victim-torch: {module_name} has no {attribute!r}") from None
    if not callable(factory):
        raise ValueError(f"--victim-torch: {module_name}:{attribute} is not callable")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"--victim-torch: {module_name}:{attribute}() returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model


def load_state_dict(model: nn.Module, checkpoint: Path) -> None:
    """Load a state dict strictly; ValueError names missing / unexpected keys."""
    try:
        state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError(f"--victim-checkpoint {checkpoint} cannot be read: {exc}") from None
    if not isinstance(state, dict):
        raise ValueError(
            f"--victim-checkpoint {checkpoint} holds a {type(state).__name__}, not a state dict "
            "(save model.state_dict())"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"--victim-checkpoint {checkpoint} does not fit the model: {exc}"
        ) from None


def export_torch_victim(
    model: nn.Module, example: np.ndarray, check: np.ndarray, out: Path, tolerance: float
) -> tuple[Path, float]:
    """Export with the project's exporter and compare with PyTorch on ``check`` images."""
    model.eval()
    export_onnx(model, example, out, VICTIM_IO)
    diff = max_abs_difference(model, out, check)
    if diff > tolerance:
        raise RuntimeError(f"victim ONNX differs from PyTorch by {diff} > {tolerance}")
    return out, diff


def import_torch_victim(
    options: VictimOptions,
    example: np.ndarray,
    check: np.ndarray,
    out: Path,
    tolerance: float,
) -> PreparedVictim:
    """``factory()`` + checkpoint + preprocessing, exported as the served victim graph."""
    model = load_torch_factory(options.torch_factory or "")
    load_state_dict(model, options.checkpoint)
    wrapper = PreprocessedClassifier(model, options.preprocessing, options.output, example.shape[1])
    wrapper.eval()
    try:  # before exporting: a shape error here is the provider's setup, not the exporter
        with torch.no_grad():
            wrapper(torch.from_numpy(example))
    except Exception as exc:
        raise ValueError(
            f"--victim-torch {options.torch_factory} does not run on the data set's images "
            f"after preprocessing (check --victim-layout / --victim-channel-order): {exc}"
        ) from None
    path, diff = export_torch_victim(wrapper, example, check, out, tolerance)
    source = {
        "kind": "torch",
        "factory": options.torch_factory,
        "file": Path(options.checkpoint).name,
        "sha256": sha256_file(str(options.checkpoint)),
        "input_name": None,
        "output_name": None,
        "preprocessing": options.preprocessing.to_dict(),
        "output": options.output,
    }
    return PreparedVictim(path, "provided", source, onnx_max_abs_diff=diff)


def trained_victim_source(options: VictimOptions) -> dict:
    """``victim_source`` for the project's own architectures (trained, or a checkpoint)."""
    checkpoint = options.checkpoint
    return {
        "kind": "trained",
        "architecture": options.architecture,
        "file": Path(checkpoint).name if checkpoint else None,
        "sha256": sha256_file(str(checkpoint)) if checkpoint else None,
        "input_name": None,
        "output_name": None,
        "preprocessing": Preprocessing().to_dict(),
        "output": "logits",
    }


# ---------------------------------------------------------------- accuracy


def chance_warning(accuracy: float, num_classes: int, kind: str = "onnx") -> str | None:
    """A loud message when the test accuracy is near chance, else None.

    A provided model that scores near 1 / classes on its own provider's test images is
    almost always fed the wrong preprocessing (scale, mean/std, channel order) or numbers its
    classes differently, and SAME trained on its answers would protect noise. A victim the
    build trained itself has simply learned too little.
    """
    chance = 1.0 / num_classes
    if accuracy > chance + 0.1 * (1.0 - chance):
        return None
    if kind == "trained":
        cause = "the victim learned little (more --victim-epochs or more training images?)"
    else:
        cause = (
            "the preprocessing is probably wrong (--victim-scale, --victim-mean, --victim-std, "
            "--victim-channel-order, --victim-layout, --victim-output), or the model's class "
            "order differs from the data set's"
        )
    return (
        f"victim test accuracy {accuracy:.4f} is near chance ({chance:.4f} for {num_classes} "
        f"classes): {cause}"
    )


def warn_if_near_chance(accuracy: float, num_classes: int, kind: str = "onnx") -> str | None:
    """Print :func:`chance_warning` in a banner (and as a Python warning) if there is one."""
    message = chance_warning(accuracy, num_classes, kind)
    if message:
        banner = "!" * 78
        print(f"{banner}\nWARNING: {message}\n{banner}", file=sys.stderr, flush=True)
        warnings.warn(message, stacklevel=2)
    return message
