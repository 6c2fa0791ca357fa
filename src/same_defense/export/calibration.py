"""Detection threshold at a target false-positive rate on benign calibration queries."""

from __future__ import annotations

import numpy as np


def threshold_at_fpr(benign_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold whose empirical FPR (share of scores strictly above it) <= target."""
    if not 0 < target_fpr < 1:
        raise ValueError(f"target FPR must be in (0, 1), got {target_fpr}")
    scores = np.sort(np.asarray(benign_scores, dtype=np.float64))
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("calibration needs a non-empty set of finite scores")
    allowed = int(np.floor(target_fpr * scores.size))  # how many may lie above the threshold
    return float(scores[scores.size - 1 - allowed])


def false_positive_rate(benign_scores: np.ndarray, threshold: float) -> float:
    return float((np.asarray(benign_scores) > threshold).mean())
