"""Detection baselines SAME is compared with.

- Max-softmax probability and the energy score of the victim's logits: stateless
  out-of-distribution scores (higher = more attacker-like, as for SAME).
- Client-level SAME (tried here, not served): the mean SAME score of a client's last 32
  queries, a stateful aggregate of the stateless score.
- PRADA (Juuti et al., EuroS&P 2019): stateful, per client. It keeps a growing set of
  queries per predicted class and the minimum L2 distance of every new query to its class's
  set; benign streams give roughly normal distances, synthetic attack streams do not. Past
  100 distances, every 10 queries a Shapiro-Wilk test runs on the distances (outliers beyond
  3 standard deviations removed); ``W < delta`` flags the client.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import shapiro

from same_defense.core.score import log_softmax


def max_softmax_score(logits: np.ndarray) -> np.ndarray:
    """``-max softmax``: low confidence is suspicious."""
    return -np.exp(log_softmax(logits)).max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy ``-T logsumexp(logits / T)`` (Liu et al. 2020): high energy is out of distribution."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    return -temperature * (top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def running_mean(scores: np.ndarray, window: int = 32) -> np.ndarray:
    """Per query, the mean score of the client's last ``window`` queries (fewer at the start)."""
    s = np.asarray(scores, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(s)])
    idx = np.arange(1, len(s) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


class Prada:
    """One client's PRADA state. :meth:`observe` returns the running Shapiro-Wilk ``W`` after
    each query (1.0 until the first test: no evidence yet)."""

    def __init__(self, min_distances: int = 100, test_every: int = 10) -> None:
        self.min_distances = min_distances
        self.test_every = test_every
        self.growing: dict[int, list[np.ndarray]] = {}
        self.class_distances: dict[int, list[float]] = {}
        self.class_threshold: dict[int, float] = {}
        self.distances: list[float] = []
        self.w = 1.0

    def _test(self) -> float:
        d = np.asarray(self.distances)
        if d.std() > 0:
            d = d[np.abs(d - d.mean()) <= 3 * d.std()]
        if len(d) < 3 or np.ptp(d) == 0:
            return 0.0  # all distances equal: as far from normal as it gets
        return float(shapiro(d).statistic)

    def observe(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
        out = np.empty(len(flat))
        for i, (x, c) in enumerate(zip(flat, np.asarray(labels).reshape(-1), strict=True)):
            c = int(c)
            if c not in self.growing:
                self.growing[c] = [x]
                self.class_distances[c] = [0.0]
                self.class_threshold[c] = 0.0
            else:
                d = float(np.sqrt(((np.stack(self.growing[c]) - x) ** 2).sum(axis=1)).min())
                self.distances.append(d)
                if d > self.class_threshold[c]:
                    self.growing[c].append(x)
                    self.class_distances[c].append(d)
                    dc = np.asarray(self.class_distances[c])
                    self.class_threshold[c] = max(
                        self.class_threshold[c], float(dc.mean() - dc.std())
                    )
                n = len(self.distances)
                if n >= self.min_distances and (n - self.min_distances) % self.test_every == 0:
                    self.w = self._test()
            out[i] = self.w
        return out


def prada_stream(images: np.ndarray, labels: np.ndarray, **kwargs) -> np.ndarray:
    """Per-query ``W`` of one client sending ``images`` in order (victim labels ``labels``)."""
    return Prada(**kwargs).observe(images, labels)


def first_flag(w: np.ndarray, delta: float) -> int | None:
    """Number of queries after which PRADA flags the client (``W < delta``), or None."""
    hit = np.flatnonzero(np.asarray(w) < delta)
    return int(hit[0]) + 1 if hit.size else None
