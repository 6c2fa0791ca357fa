"""Loading a provided ONNX victim and checking its declared inputs and outputs.

Everything here runs before the graph is wrapped or executed, so that each error names the
``same-build`` option to fix instead of surfacing later as an onnxruntime or Triton message.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from .spec import Preprocessing

# Our wrapper uses broadcasting Mul/Sub/Div (opset 7) and Max (opset 8).
MIN_OPSET = 8
_FLOAT_INPUTS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


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


def choose_io(
    model: onnx.ModelProto,
    prep: Preprocessing,
    shape: tuple[int, int, int],
    input_name: str | None,
    output_name: str | None,
) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    """The provided input the image feeds and the output served, both checked.

    ``input_name`` / ``output_name`` are the user's choices (None: the graph's only one).
    """
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
    model_output = next(o for o in model.graph.output if o.name == output_name)
    return model_input, model_output
