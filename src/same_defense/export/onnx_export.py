"""Export the victim and the reconstructor to ONNX and check them against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OPSET = 17
VICTIM_IO = (["IMAGE"], ["LOGITS"])
RECONSTRUCTOR_IO = (["IMAGE"], ["RECON_ERROR", "SHADOW_LOGITS", "INPUT_STATS"])


def export_onnx(model: nn.Module, example: np.ndarray, path: Path, io: tuple[list, list]) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis on every input and output."""
    inputs, outputs = io
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but exact
        torch.onnx.export(
            model, (torch.from_numpy(example),), str(path), input_names=inputs,
            output_names=outputs, dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
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
