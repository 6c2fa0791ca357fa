"""Uniform-noise thief: the trivial baseline. Random pixels, clone trained on the answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from same_harness.data.queries import make_query_set

from .base import AttackResult, Evaluate
from .clone import CloneTrainer
from .knockoff import KnockoffNets
from .oracle import Oracle


@dataclass(eq=False)
class UniformNoise:
    """KnockoffNets on a pool of uniform-noise images; ``checkpoints`` as there."""

    name: ClassVar[str] = "noise"

    shape: tuple[int, int, int]
    batch_size: int = 64
    seed: int = 0
    checkpoints: tuple[int, ...] = ()

    def run(
        self,
        oracle: Oracle,
        trainer: CloneTrainer,
        output_type: str,
        evaluate: Evaluate | None = None,
    ) -> AttackResult:
        """Query as many noise images as the budget allows (4,000 without a budget)."""
        n = oracle.remaining if oracle.remaining is not None else 4000
        pool = make_query_set("noise", n, self.shape, self.seed)
        inner = KnockoffNets(
            pool, np.zeros(n, np.int64), "random", self.batch_size, self.seed, self.checkpoints
        )
        result = inner.run(oracle, trainer, output_type, evaluate)
        result.attack = self.name
        return result
