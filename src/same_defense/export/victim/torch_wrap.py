"""A provider's PyTorch victim: ``MODULE:FACTORY`` plus a state dict, behind its preprocessing.

The module is wrapped in :class:`PreprocessedClassifier` (the same steps the ONNX wrapper
builds as nodes) and exported with the project's own exporter, then compared with PyTorch.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.manifest import sha256_file
from ..onnx_export import VICTIM_IO, export_onnx, max_abs_difference
from .spec import PROB_FLOOR, PreparedVictim, Preprocessing, VictimOptions


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
