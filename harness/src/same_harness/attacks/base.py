"""What every attack is and returns, and the helpers they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
from torch import nn

from .oracle import Answer, Oracle

if TYPE_CHECKING:
    from .clone import CloneTrainer

# Called with a clone, returns a figure to log against queries spent (the evaluation passes
# "clone accuracy on the test split"); attacks never see the test data themselves.
Evaluate = Callable[[nn.Module], float]


@dataclass
class AttackResult:
    """What an attack returns: the clone, the queries it spent and how the clone improved.

    ``curve`` holds ``(queries spent, evaluate(clone))`` points when the attack was given an
    ``evaluate``; ``info`` holds the attack's own figures (queries per round, bandit pulls, ...).
    """

    attack: str
    output_type: str
    clone: nn.Module
    queries_used: int
    curve: list[tuple[int, float]] = field(default_factory=list)  # (queries spent, evaluate)
    info: dict = field(default_factory=dict)


class Attack(Protocol):
    """An extraction attack: it spends at most ``oracle``'s budget and returns its clone.

    Each attack is a dataclass of its own settings; the evaluation makes one per run
    (``same_harness.evaluation.setup.make_attack``) and calls :meth:`run`.
    """

    name: ClassVar[str]

    def run(
        self,
        oracle: Oracle,
        trainer: CloneTrainer,
        output_type: str,
        evaluate: Evaluate | None = None,
    ) -> AttackResult:
        """Query ``oracle`` and train a clone with ``trainer``.

        ``output_type`` ("probs" or "labels") is what the clone trains on; ``evaluate``, if
        given, is logged against queries spent in the result's ``curve``.
        """
        ...


def query_in_batches(oracle: Oracle, images: np.ndarray, batch_size: int) -> Answer:
    """Send ``images`` as consecutive batches (what a client does); concatenate the answers."""
    probs, labels = [], []
    for start in range(0, len(images), batch_size):
        answer = oracle.query(images[start : start + batch_size])
        probs.append(answer.probs)
        labels.append(answer.labels)
    if not probs:
        return Answer(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
    return Answer(np.concatenate(probs), np.concatenate(labels))


def concat_answers(a: Answer, b: Answer) -> Answer:
    """``a``'s rows then ``b``'s; an empty side is skipped (its ``(0, 0)`` probs cannot stack)."""
    if len(a.labels) == 0:
        return b
    if len(b.labels) == 0:
        return a
    return Answer(np.concatenate([a.probs, b.probs]), np.concatenate([a.labels, b.labels]))


def spendable(oracle: Oracle, wanted: int) -> int:
    """How many of ``wanted`` queries the budget still allows."""
    return wanted if oracle.remaining is None else max(0, min(wanted, oracle.remaining))


def shift_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Translate each image by ``(dy, dx)`` pixels with zero fill (no wrap-around)."""
    out = np.zeros_like(images)
    h, w = images.shape[2:]
    for i, (dy, dx) in enumerate(shifts):
        dy, dx = int(dy), int(dx)
        src_y = slice(max(0, -dy), h - max(0, dy))
        src_x = slice(max(0, -dx), w - max(0, dx))
        dst_y = slice(max(0, dy), h - max(0, -dy))
        dst_x = slice(max(0, dx), w - max(0, -dx))
        out[i, :, dst_y, dst_x] = images[i, :, src_y, src_x]
    return out


def extend_pool(
    images: np.ndarray, groups: np.ndarray, size: int, seed: int, max_shift: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Grow a transfer pool to ``size`` with randomly shifted copies of its images.

    A budget above the pool's size then buys new images instead of repeats (an attacker would
    augment, not resend). Returns ``(images, groups)``; each copy keeps its original's group.
    """
    if size <= len(images):
        return images, groups
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(images), size - len(images))
    shifts = rng.integers(-max_shift, max_shift + 1, (len(pick), 2))
    extra = shift_images(images[pick], shifts)
    return np.concatenate([images, extra]), np.concatenate([groups, groups[pick]])
