"""A provider's own classifier for the "bring your own victim" tests, and a repository built
around it with ``same-build --victim-onnx``.

The provider's model deliberately expects everything the project's convention is not: NHWC
layout, 0-255 pixels, BGR channel order, per-channel mean/std, softmax probabilities out, and
non-default tensor names. It is trained (seconds) on the tiny RGB set of ``tests/tiny_rgb.py``
so that its accuracy tells right preprocessing from wrong.

``build_provided_victim_repository(tmp_path)`` is meant for reuse by other test files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from same_defense.export.build import main as build_main

from .tiny_rgb import CLASSES, tiny_rgb_images, write_image_folder

SCALE = 255.0
# In the model's (BGR) channel order, as a provider would quote them.
MEAN = (104.0, 117.0, 124.0)
STD = (58.0, 57.0, 59.0)
FOLDER_CLASSES = sorted(CLASSES)
INPUT_NAME, OUTPUT_NAME = "pixels_bgr_nhwc", "class_probs"
PREPROCESSING_ARGS = [
    "--victim-input-name",
    INPUT_NAME,
    "--victim-output-name",
    OUTPUT_NAME,
    "--victim-scale",
    "255",
    "--victim-mean",
    ",".join(map(str, MEAN)),
    "--victim-std",
    ",".join(map(str, STD)),
    "--victim-channel-order",
    "bgr",
    "--victim-layout",
    "nhwc",
    "--victim-output",
    "probs",
]


def provider_preprocess(images: np.ndarray) -> np.ndarray:
    """The provider's own pipeline, written independently of the code under test:
    [0, 1] RGB NCHW -> 0-255 BGR, normalized, NHWC."""
    x = images.astype(np.float32) * np.float32(SCALE)
    x = x[:, ::-1]  # RGB -> BGR
    x = (x - np.float32(MEAN)[None, :, None, None]) / np.float32(STD)[None, :, None, None]
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


class ProviderNet(nn.Module):
    """Small CNN over NHWC input; ``softmax=True`` answers probabilities (as exported)."""

    def __init__(self, classes: int = len(CLASSES), softmax: bool = False) -> None:
        super().__init__()
        self.softmax = softmax
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x.permute(0, 3, 1, 2))
        return torch.softmax(logits, dim=1) if self.softmax else logits


def make_provider_net() -> nn.Module:
    """The factory for ``--victim-torch tests.provided_victim:make_provider_net``."""
    return ProviderNet(softmax=True)


def train_provider_net(seed: int = 0, epochs: int = 20, label_shift: int = 0) -> ProviderNet:
    """Train on the provider's preprocessed tiny RGB images (about a second on one thread).

    ``label_shift`` numbers the classes differently from the data set (class k is called
    k + shift): a good model whose answers the build cannot score.
    """
    torch.manual_seed(seed)
    images, labels = tiny_rgb_images()
    # The provider's class indices follow the data set's: ``--data folder`` sorts the class
    # folders by name (a model trained on CLASSES' order scores near chance: the build warns).
    labels = np.asarray([FOLDER_CLASSES.index(CLASSES[k]) for k in labels], dtype=np.int64)
    labels = (labels + label_shift) % len(CLASSES)
    x, y = torch.from_numpy(provider_preprocess(images)), torch.from_numpy(labels)
    net = ProviderNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(epochs):
        for index in torch.randperm(len(x)).split(64):
            loss = F.cross_entropy(net(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.softmax = True
    return net.eval()


def export_provider_onnx(net: nn.Module, path: Path, dynamic_batch: bool = True) -> Path:
    """The provider's ONNX file: its own tensor names, NHWC input, softmax output."""
    example = torch.from_numpy(provider_preprocess(tiny_rgb_images(per_class=1)[0][:2]))
    axes = {INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}} if dynamic_batch else None
    return legacy_export(
        net,
        example,
        path,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes=axes,
        opset_version=17,
    )


def legacy_export(model: nn.Module, example: torch.Tensor, path: Path, **kwargs) -> Path:
    """torch.onnx.export with the TorchScript exporter (deprecated, hence the silenced
    warnings, but what most providers' files come from)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
    return path


def build_args(work: Path, data_root: Path) -> list[str]:
    """``same-build`` arguments for a tiny build on ``data_root`` into ``work``."""
    return [
        "--data",
        "folder",
        "--data-root",
        str(data_root),
        "--preset",
        "tiny",
        "--quiet",
        "--max-train",
        "64",
        "--mae-epochs",
        "1",
        "--shadow-epochs",
        "1",
        "--repository",
        str(work / "model_repository"),
        "--artifacts",
        str(work / "artifacts"),
        "--report",
        str(work / "build.json"),
        # The tests match the exception itself; without --debug a refusal is one line on
        # stderr and SystemExit(1) (tests/test_build_checks.py checks that style).
        "--debug",
    ]


def build_provided_victim_repository(tmp_path: Path) -> Path:
    """Train the provider's model, export it to ONNX and build a repository that protects it.

    Returns the repository; ``tmp_path`` also holds ``provided.onnx`` (the provider's file),
    ``images/`` (the data set) and ``artifacts/``.
    """
    torch.set_num_threads(1)
    data_root = write_image_folder(tmp_path / "images")
    provided = export_provider_onnx(train_provider_net(), tmp_path / "provided.onnx")
    build_main(
        [*build_args(tmp_path, data_root), "--victim-onnx", str(provided)] + PREPROCESSING_ARGS
    )
    return tmp_path / "model_repository"
