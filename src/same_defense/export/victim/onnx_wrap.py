"""Wrapping a provided ONNX victim into the served graph ``IMAGE -> LOGITS``.

The provider's preprocessing becomes nodes before its graph and the logits conversion nodes
after it; its own nodes and weights are copied unchanged (see :mod:`same_defense.export.victim`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...core.layout import IMAGE, LOGITS
from ...core.manifest import sha256_file
from ..onnx_export import session
from .onnx_io import choose_io, load_onnx_model
from .onnx_names import FreshNames, rename_tensor, tensor_names
from .spec import (
    OUTPUT_KINDS,
    PROB_FLOOR,
    PreparedVictim,
    Preprocessing,
    VictimOptions,
)


def _constant(names: FreshNames, base: str, value: np.ndarray) -> tuple[onnx.NodeProto, str]:
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
    prep: Preprocessing, channels: int, model_input: str, input_type: int, names: FreshNames
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
    provided_output: str, output_type: int, output: str, names: FreshNames
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
    model_input, model_output = choose_io(model, prep, shape, input_name, output_name)
    input_type = model_input.type.tensor_type.elem_type
    output_type = model_output.type.tensor_type.elem_type or TensorProto.FLOAT

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    names = FreshNames(tensor_names(graph) | {IMAGE, LOGITS})
    inner_input, inner_output = _rename_provided_io(
        graph, names, model_input.name, model_output.name
    )
    pre = _preprocessing_nodes(prep, shape[0], inner_input, input_type, names)
    post = _output_nodes(inner_output, output_type, output, names)
    nodes = [*pre, *graph.node, *post]  # topological order: ours first and last
    del graph.node[:]
    graph.node.extend(nodes)
    _set_served_io(wrapped, shape, num_classes)
    try:
        onnx.checker.check_model(wrapped)
    except Exception as exc:  # a bug here, not the provider's: say so
        raise RuntimeError(f"the wrapped victim graph is not valid ONNX: {exc}") from exc
    return wrapped, model_input.name, model_output.name


def _rename_provided_io(
    graph: onnx.GraphProto, names: FreshNames, input_name: str, output_name: str
) -> tuple[str, str]:
    """Free ``IMAGE`` / ``LOGITS`` for our IO; the provided input and output's new names."""
    # IMAGE and LOGITS become our graph's IO: a provided tensor of that name moves aside.
    renamed = {}
    for reserved in (IMAGE, LOGITS):
        if reserved in tensor_names(graph):
            renamed[reserved] = names.fresh(f"provided_{reserved.lower()}")
            rename_tensor(graph, reserved, renamed[reserved])
    inner_input = names.fresh("provided_input")
    rename_tensor(graph, renamed.get(input_name, input_name), inner_input)
    return inner_input, renamed.get(output_name, output_name)


def _set_served_io(model: onnx.ModelProto, shape: tuple[int, int, int], num_classes: int) -> None:
    """Make ``IMAGE`` [batch, C, H, W] the only input and ``LOGITS`` [batch, K] the output."""
    graph = model.graph
    # Old IRs (< 4) list every initializer as a graph input too; from IR 4 such inputs would
    # be overridable, and the Triton backends want exactly the config's inputs.
    initialized = {t.name for t in graph.initializer}
    constants = [i for i in graph.input if i.name in initialized] if model.ir_version < 4 else []
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, ["batch", *shape]))
    graph.input.extend(constants)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", num_classes])
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
