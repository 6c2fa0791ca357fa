"""KnockoffNets (Orekondy et al., CVPR 2019): query a transfer set, train a clone on the answers.

The transfer set comes from another source than the victim's training data.

Two sampling strategies, as in the paper:

- ``random``: draw the transfer set in random order without replacement;
- ``adaptive``: a gradient bandit over groups of the transfer set (its own labels, or clusters)
  learns which groups to draw from. Rewards follow the paper's ``cert`` (margin of the top
  answer) and ``div`` (distance of the batch's answers from the running mean answer); the
  paper's ``loss`` reward needs a clone retrained during querying and is left out to keep
  the attack CPU-sized.

Transfer sets here: sklearn's 8x8 digits upscaled (the stand-in for EMNIST-digits), crops
of sklearn's sample photographs, CIFAR-100 read from local files (the paper's transfer set
for a CIFAR-10 victim), and the look-alike digits of :mod:`same_harness.data.lookalike`
(``fonts``, ``strokes``; ``fonts-blur``: the font digits blurred as by a camera, a thief who
hides in an honest drift), all built by :func:`transfer_set`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from same_defense.data.datasets import load_dataset
from same_defense.data.images import conform

from ..data.queries import digits8x8, make_query_set
from .base import AttackResult, Evaluate, concat_answers, extend_pool, query_in_batches, spendable
from .clone import CloneTrainer
from .oracle import Answer, Oracle

TRANSFER_SETS = ("digits8x8", "natural", "cifar100", "fonts", "strokes", "fonts-blur")
# Transfer sets read from local files: the folder under ``root`` that must exist.
LOCAL_TRANSFER_SETS = {"cifar100": "cifar-100-python"}
# Sets whose groups are the digit each image shows: the thief knows those labels without
# asking (it rendered the digit, or the set ships with them). CIFAR-100's labels are not
# the victim's classes; photo crops only have clusters.
LABELLED_SOURCES = ("digits8x8", "fonts", "strokes", "fonts-blur")


def transfer_set_available(source: str, root: str | Path | None) -> bool:
    """Whether ``source`` can be built here (the packaged ones always can)."""
    folder = LOCAL_TRANSFER_SETS.get(source)
    return folder is None or (root is not None and (Path(root) / folder).is_dir())


def transfer_set(
    source: str,
    size: int,
    shape: tuple[int, int, int],
    seed: int = 0,
    root: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, groups)``: the pool a KnockoffNets attacker samples from.

    Groups are what adaptive sampling chooses between: the labels the set comes with (an
    attacker holding EMNIST or CIFAR-100 knows its labels), or k-means clusters of the crops.
    ``root`` holds the files of a local set (``cifar100``: ``<root>/cifar-100-python``).
    """
    if source in LOCAL_TRANSFER_SETS:
        if not transfer_set_available(source, root):
            raise FileNotFoundError(
                f"transfer set {source} needs {LOCAL_TRANSFER_SETS[source]}/ under a root "
                f"folder (got {root}); pass --transfer-root"
            )
        data = load_dataset(source, root)
        pick = np.random.default_rng(seed).permutation(len(data))[:size]
        base, groups = conform(data.images[pick], shape), data.labels[pick]
        return extend_pool(base, groups, size, seed)
    if source == "digits8x8":
        base, groups = digits8x8(min(size, 1797), shape, seed)
        return extend_pool(base, groups, size, seed)
    if source == "natural":
        images = make_query_set("natural", size, shape, seed)
        return images, _clusters(images, 10, seed)
    if source in ("fonts", "strokes", "fonts-blur"):
        from ..data.lookalike import lookalike_digits
        from ..data.shifts import apply_shift

        images, labels = lookalike_digits(source.split("-")[0], size, shape, seed)
        if source.endswith("-blur"):
            images = apply_shift("blur@1", images, seed)
        return images, labels
    raise ValueError(f"unknown transfer set {source!r}; choose one of {', '.join(TRANSFER_SETS)}")


def _clusters(images: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(images)))
    small = images[:, :, ::4, ::4].reshape(len(images), -1)
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(small).astype(np.int64)


@dataclass(eq=False)
class KnockoffNets:
    """Random or adaptive sampling from ``pool``; the clone trains on every answer at the end.

    ``checkpoints``: budgets (queries spent) at which to also train a clone on the answers so
    far and log ``evaluate(clone)``; that is the clone-accuracy-against-queries curve. Those
    clones take as many optimiser steps as the final one (a thief with fewer answers trains
    longer on them), so the curve shows the effect of the answers, not of the schedule.
    """

    name: ClassVar[str] = "knockoff"

    pool: np.ndarray = field(repr=False)
    groups: np.ndarray | None = field(default=None, repr=False)
    sampling: str = "random"
    batch_size: int = 64
    seed: int = 0
    checkpoints: tuple[int, ...] = ()
    bandit_lr: float = 0.5

    def __post_init__(self) -> None:
        if self.sampling not in ("random", "adaptive"):
            raise ValueError(f"sampling must be 'random' or 'adaptive', got {self.sampling!r}")
        if self.sampling == "adaptive" and self.groups is None:
            raise ValueError("adaptive sampling needs groups")
        if self.groups is None:
            self.groups = np.zeros(len(self.pool), np.int64)
        self.checkpoints = tuple(sorted(self.checkpoints))

    def run(
        self,
        oracle: Oracle,
        trainer: CloneTrainer,
        output_type: str,
        evaluate: Evaluate | None = None,
    ) -> AttackResult:
        """Sample and query the pool up to the budget, then train the clone on every answer.

        ``info`` holds the adaptive bandit's pulls per group (empty for random sampling).
        """
        n = spendable(oracle, len(self.pool))
        if self.sampling == "random":
            order = np.random.default_rng(self.seed).permutation(len(self.pool))[:n]
            images = self.pool[order]
            answer = query_in_batches(oracle, images, self.batch_size)
            info: dict = {}
        else:
            images, answer, info = self._adaptive(oracle, n)
        curve = []
        if evaluate is not None and self.checkpoints:
            keep = int((answer.labels >= 0).sum())
            steps = trainer.config.epochs * -(-keep // trainer.config.batch_size)
            for c in self.checkpoints:
                if c < len(images):
                    part = Answer(answer.probs[:c], answer.labels[:c])
                    clone = trainer.fit_answers(images[:c], part, output_type, min_steps=steps)
                    curve.append((c, evaluate(clone)))
        clone = trainer.fit_answers(images, answer, output_type)
        if evaluate is not None:
            curve.append((len(images), evaluate(clone)))
        return AttackResult(self.name, output_type, clone, len(images), curve, info)

    def _adaptive(self, oracle: Oracle, n: int) -> tuple[np.ndarray, Answer, dict]:
        """Gradient bandit over groups (Sutton & Barto 2.8), one batch per pull."""
        rng = np.random.default_rng(self.seed)
        names = np.unique(self.groups)
        unused = {g: list(rng.permutation(np.flatnonzero(self.groups == g))) for g in names}
        prefs = np.zeros(len(names))
        baseline = 0.0
        mean_answer: np.ndarray | None = None
        chosen: list[np.ndarray] = []
        answer = Answer(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        pulls = np.zeros(len(names), np.int64)
        spent = 0
        t = 0
        while spent < n:
            alive = np.array([len(unused[g]) > 0 for g in names])
            if not alive.any():
                break
            logits = np.where(alive, prefs, -np.inf)
            pi = np.exp(logits - logits[alive].max())
            pi /= pi.sum()
            a = int(rng.choice(len(names), p=pi))
            take = min(self.batch_size, n - spent, len(unused[names[a]]))
            index = np.array([unused[names[a]].pop() for _ in range(take)])
            batch = oracle.query(self.pool[index])
            chosen.append(index)
            answer = concat_answers(answer, batch)
            spent += take
            pulls[a] += 1
            t += 1
            # cert: margin between the two most likely classes of each answer
            top2 = np.sort(batch.probs, axis=1)[:, -2:]
            cert = float((top2[:, 1] - top2[:, 0]).mean())
            batch_mean = batch.probs.mean(axis=0)
            div = 0.0 if mean_answer is None else float(np.abs(batch_mean - mean_answer).sum())
            mean_answer = (
                batch_mean if mean_answer is None else 0.9 * mean_answer + 0.1 * batch_mean
            )
            reward = cert + div
            baseline += (reward - baseline) / t
            one_hot = np.zeros(len(names))
            one_hot[a] = 1.0
            prefs += self.bandit_lr * (reward - baseline) * (one_hot - pi)
        index = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
        info = {"pulls_per_group": {str(g): int(p) for g, p in zip(names, pulls, strict=True)}}
        return self.pool[index], answer, info
