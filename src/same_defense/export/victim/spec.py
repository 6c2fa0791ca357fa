"""What a provided victim expects and where the served victim comes from.

:class:`Preprocessing` describes the provider's input convention relative to the project's
([0, 1] RGB NCHW); :class:`VictimOptions` is the parsed victim part of ``same-build``;
:class:`PreparedVictim` and :func:`trained_victim_source` are what the build hands on to the
repository and records in the manifest. See :mod:`same_defense.export.victim` for the whole picture.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...core.manifest import sha256_file

CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
OUTPUT_KINDS = ("logits", "probs")
# Smallest normal float32: log() of a probability that underflowed to 0 stays finite (-87.3)
# without reordering any class that the model still tells apart.
PROB_FLOOR = float(np.finfo(np.float32).tiny)


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
