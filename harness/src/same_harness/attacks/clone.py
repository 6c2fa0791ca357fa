"""The thief's model: what it trains on (probabilities or labels only) and how.

A probability thief fits the returned probabilities (KL); a label-only thief (``LABEL``) sees
only the argmax and fits its one-hot (KL to a one-hot is cross-entropy, so both go through one
training loop). Rows the service refused (label -1) carry no answer and are dropped.

Training is memoised on the exact inputs (images, targets, starting weights, settings): when
two defenses give a thief identical answers (no defense and ``monitor``; a label thief under
``top1``), the second clone costs nothing, and the figures are identical by construction.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from same_defense.models import VICTIM_ARCHITECTURES, build_classifier
from same_defense.train import TrainConfig, predict_logits, train_classifier

from .oracle import Answer

OUTPUT_TYPES = ("probs", "labels")


@dataclass(frozen=True)
class CloneConfig:
    """How the thief trains. ``architecture=None`` means the victim's (the default)."""

    architecture: str | None = None
    # Sized so the whole matrix (about 70 clones) fits 30 minutes on 2 cores shared with other
    # work. Measured on 4,000 answers for the 8x8-digits transfer set, 1 thread, batch 64,
    # shift 1: 2 epochs lr 1e-3 -> 52.9 % clone accuracy; 2 epochs lr 3e-3 -> 71.3 %;
    # 3 epochs lr 3e-3 -> 86.9 % (28 s); lr 5e-3 diverged (17.5 %); shift 0 cost 7 points.
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    augment_shift: int = 1
    min_steps: int = 0  # floor on optimiser steps, for small query sets
    seed: int = 0


def training_targets(answer: Answer, output_type: str) -> tuple[np.ndarray, np.ndarray]:
    """``(keep mask [N], soft targets [kept, C])`` the thief trains on."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    keep = answer.labels >= 0
    if output_type == "probs":
        targets = answer.probs[keep].astype(np.float32)
        targets = targets / np.maximum(targets.sum(axis=1, keepdims=True), 1e-12)
    else:
        targets = np.zeros((int(keep.sum()), answer.probs.shape[1]), np.float32)
        targets[np.arange(len(targets)), answer.labels[keep]] = 1.0
    return keep, targets


def _digest(*arrays: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha1(extra.encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _state_digest(model: nn.Module) -> str:
    return _digest(*(t.detach().cpu().numpy() for t in model.state_dict().values()))


def clone_architecture(manifest: dict) -> str:
    """The thief's default clone architecture for the repository that ``manifest`` describes.

    The victim's own when the build trained it, else the shadow's (a provided victim's
    architecture is unknown to us, and the build chose the shadow's by input size).
    """
    victim = manifest.get("victim_architecture", "cnn3")
    if victim in VICTIM_ARCHITECTURES:
        return victim
    return manifest.get("shadow_architecture", "cnn3")


class CloneTrainer:
    """Builds and trains clones; remembers results keyed by everything that determines them."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        victim_architecture: str,
        config: CloneConfig | None = None,
        progress: bool = False,
    ) -> None:
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.config = config or CloneConfig()
        self.architecture = self.config.architecture or victim_architecture
        self.progress = progress
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self.trained = 0  # trainings actually run
        self.reused = 0  # trainings answered from the cache

    def new_model(self, seed: int | None = None) -> nn.Module:
        """A fresh untrained clone, initialised from ``seed`` (default: the config's)."""
        torch.manual_seed(self.config.seed if seed is None else seed)
        return build_classifier(self.architecture, self.input_shape, self.num_classes)

    def fit(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        model: nn.Module | None = None,
        epochs: int | None = None,
        min_steps: int = 0,
    ) -> nn.Module:
        """Train ``model`` (a fresh clone if None) on soft ``targets``; in place, returned.

        ``min_steps`` raises the epoch count for small sets so that a 150-image seed set
        still gets a usable number of optimiser steps.
        """
        model = model if model is not None else self.new_model()
        epochs = self.config.epochs if epochs is None else epochs
        if len(images) == 0:
            return model
        steps_per_epoch = -(-len(images) // self.config.batch_size)
        min_steps = max(min_steps, self.config.min_steps)
        epochs = max(epochs, -(-min_steps // steps_per_epoch))
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=self.config.batch_size,
            lr=self.config.lr,
            seed=self.config.seed,
            augment_shift=self.config.augment_shift,
            progress=self.progress,
        )
        key = _digest(
            images, targets, extra=f"{_state_digest(model)}|{asdict(cfg)}|{self.architecture}"
        )
        if key in self._cache:
            model.load_state_dict(self._cache[key])
            model.eval()
            self.reused += 1
            return model
        train_classifier(model, images, None, cfg, soft_targets=targets, desc="clone")
        self._cache[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.trained += 1
        return model

    def fit_answers(
        self, images: np.ndarray, answer: Answer, output_type: str, **kwargs
    ) -> nn.Module:
        """:meth:`fit` on ``answer`` as an ``output_type`` thief sees it; refused rows dropped.

        ``kwargs`` (``model``, ``epochs``, ``min_steps``) go to :meth:`fit`.
        """
        keep, targets = training_targets(answer, output_type)
        return self.fit(images[keep], targets, **kwargs)


def predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Clone's predicted labels."""
    return predict_logits(model, np.ascontiguousarray(images, dtype=np.float32)).argmax(axis=1)
