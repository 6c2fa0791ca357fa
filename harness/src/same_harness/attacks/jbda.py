"""Jacobian-based dataset augmentation (Papernot et al., AsiaCCS 2017).

The thief holds a small in-distribution seed set (150 images in the paper). Each round it
trains the clone on everything queried so far, then creates one new image per known image,
``x' = clip(x + lambda * sign(d clone(x)[y] / dx), 0, 1)`` with ``y`` the victim's answer, and
queries those: the set doubles every round. The last round is cut to what the budget allows.
Papernot's periodic step (``tau``) flips the sign of lambda every ``tau`` rounds; off by
default, as the reference setting is a plain ``lambda = 0.1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .base import AttackResult, Evaluate, concat_answers, query_in_batches, spendable
from .clone import CloneTrainer, predict
from .oracle import Oracle


def jacobian_step(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, lam: float):
    """``clip(x + lam * sign(grad_x logit_y(x)), 0, 1)`` for each image and its label."""
    model.eval()
    out = []
    for start in range(0, len(images), 256):
        x = torch.from_numpy(images[start : start + 256]).requires_grad_(True)
        y = torch.from_numpy(labels[start : start + 256])
        logits = model(x)
        logits.gather(1, y[:, None]).sum().backward()
        out.append(np.clip(images[start : start + 256] + lam * np.sign(x.grad.numpy()), 0, 1))
    return np.concatenate(out).astype(np.float32)


@dataclass(eq=False)
class Jbda:
    """JBDA from ``seed_images``: each round adds one gradient-sign step of every known image.

    Intermediate rounds train the clone briefly (``round_epochs``, at least ``round_min_steps``
    optimiser steps) only to steer the next augmentation; ``tau`` enables Papernot's periodic
    sign flip of ``lam``.
    """

    name: ClassVar[str] = "jbda"

    seed_images: np.ndarray = field(repr=False)
    rounds: int = 6
    lam: float = 0.1
    tau: int | None = None
    batch_size: int = 64
    round_epochs: int = 1
    round_min_steps: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        self.seed_images = np.ascontiguousarray(self.seed_images, dtype=np.float32)

    def run(
        self,
        oracle: Oracle,
        trainer: CloneTrainer,
        output_type: str,
        evaluate: Evaluate | None = None,
    ) -> AttackResult:
        """Query the seed set, then train, augment and query until ``rounds`` or the budget ends.

        ``info`` holds the queries of each round, the seed set's first.
        """
        rng = np.random.default_rng(self.seed)
        images = self.seed_images[: spendable(oracle, len(self.seed_images))]
        answer = query_in_batches(oracle, images, self.batch_size)
        clone = trainer.new_model()
        curve: list[tuple[int, float]] = []
        per_round = [len(images)]
        for rho in range(self.rounds):
            room = spendable(oracle, len(images))
            last = rho == self.rounds - 1 or room == 0
            # Intermediate rounds only steer the next augmentation: short, warm-started
            # training. The final clone gets the full training on everything.
            epochs = None if last else self.round_epochs
            clone = trainer.fit_answers(
                images,
                answer,
                output_type,
                model=clone,
                epochs=epochs,
                min_steps=0 if last else self.round_min_steps,
            )
            if evaluate is not None:
                curve.append((len(images), evaluate(clone)))
            if last:
                break
            pick = np.sort(rng.permutation(len(images))[:room])
            # Rows the service refused (label -1) steer by the clone's own guess.
            guess = predict(clone, images[pick])
            labels = np.where(answer.labels[pick] >= 0, answer.labels[pick], guess)
            lam = self.lam * (-1) ** (rho // self.tau) if self.tau else self.lam
            new = jacobian_step(clone, images[pick], labels.astype(np.int64), lam)
            answer = concat_answers(answer, query_in_batches(oracle, new, self.batch_size))
            images = np.concatenate([images, new])
            per_round.append(len(new))
        info = {"queries_per_round": per_round, "seed_queries": per_round[0]}
        return AttackResult(self.name, output_type, clone, len(images), curve, info)
