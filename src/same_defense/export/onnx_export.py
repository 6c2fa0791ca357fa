"""Export the victim and the reconstructor to ONNX and check them against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from ..core.layout import IMAGE, INPUT_STATS, LOGITS, RECON_ERROR, SHADOW_LOGITS

OPSET = 17
VICTIM_IO = ([IMAGE], [LOGITS])
RECONSTRUCTOR_IO = ([IMAGE], [RECON_ERROR, SHADOW_LOGITS, INPUT_STATS])


def export_onnx(model: nn.Module, example: np.ndarray, path: Path, io: tuple[list, list]) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis on every input and output."""
    inputs, outputs = io
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but exact
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_difference(model: nn.Module, path: Path, images: np.ndarray, batch: int = 128) -> float:
    """Largest absolute difference between PyTorch and onnxruntime over all outputs."""
    sess = session(path)
    worst = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            expected = model(torch.from_numpy(x))
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = sess.run(None, {sess.get_inputs()[0].name: x})
            for e, g in zip(expected, got, strict=True):
                worst = max(worst, float(np.abs(e.numpy() - g).max()))
    return worst


# ---------------------------------------------------------------- reconstructor variants
# What `same-build --reconstructor-variant` can serve instead of the exported float32 graph.
# `make variants` (load/variants.py) measures each one's CPU cost and per-query AUROC.
RECONSTRUCTOR_VARIANTS = ("float32", "optimized", "fused", "int8-dynamic", "int8-static")


class _CalibrationReader:
    """Feeds calibration images to onnxruntime's static quantizer, a batch at a time."""

    def __init__(self, images: np.ndarray, batch: int = 64) -> None:
        self._batches = iter(
            [np.ascontiguousarray(images[i : i + batch]) for i in range(0, len(images), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        return None if x is None else {IMAGE: x}


def reconstructor_variant(
    source: Path, variant: str, out: Path, calibration: np.ndarray | None = None
) -> Path:
    """Write ``variant`` of the float32 graph ``source`` to ``out`` and return ``out``.

    optimized: onnxruntime's graph optimisations applied offline (EXTENDED level, which is
    portable across CPUs; ALL would bake in this CPU's memory layouts). fused: the
    transformer optimizer's fusions (LayerNorm, GELU, attention where it finds the pattern).
    int8-dynamic: int8 weights, activations quantized at run time. int8-static: weights and
    activations int8 (QDQ, per channel), activation ranges from ``calibration`` images.
    """
    if variant not in RECONSTRUCTOR_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {RECONSTRUCTOR_VARIANTS}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if variant == "float32":
        out.write_bytes(Path(source).read_bytes())
    elif variant == "optimized":
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    elif variant == "fused":
        from onnxruntime.transformers.optimizer import optimize_model

        # num_heads/hidden_size 0: read from the graph (encoder and decoder differ).
        optimize_model(
            str(source), model_type="vit", num_heads=0, hidden_size=0
        ).save_model_to_file(str(out))
    elif variant == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8)
    else:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        if calibration is None or not len(calibration):
            raise ValueError("int8-static needs calibration images")
        # Only the matrix products: quantizing everything also put the input checks (NaN,
        # infinity, pixel range in INPUT_STATS) through int8, where NaN and 255 vanish.
        quantize_static(
            str(source),
            str(out),
            _CalibrationReader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        )
    onnx.checker.check_model(onnx.load(str(out)))
    return out
