"""Calibration on benign queries: the per-query threshold at a target false-positive rate, and
the class-conditional references and settings of the account-level test."""

from __future__ import annotations

import warnings

import numpy as np

from ..core.accounts import AccountSettings
from ..core.score import same_score
from ..serving.inprocess import GraphRunner


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


def class_references(
    scores: np.ndarray, predicted: np.ndarray, num_classes: int
) -> list[list[float]]:
    """Calibration scores grouped by the victim's predicted class, sorted (for the manifest)."""
    scores = np.asarray(scores, dtype=np.float64)
    predicted = np.asarray(predicted)
    return [np.sort(scores[predicted == c]).tolist() for c in range(num_classes)]


def account_settings_for(
    reference: list[list[float]],
    level: float = AccountSettings.level,
    p1: float = AccountSettings.p1,
    horizon: int = 1000,
    false_alarm: float = 1e-3,
) -> AccountSettings:
    """The account test's settings for this calibration set.

    ``p0`` is the largest, over classes, upper ``1 - false_alarm / C`` quantile of the honest
    exceedance rate: with ``n`` reference scores the rate of ``p <= level`` is
    ``Beta(k, n + 1 - k)`` distributed, ``k = floor(level (n + 1))`` (a finite reference can
    sit low or high by chance). ``h = log(horizon / false_alarm)`` bounds the chance that an
    honest account is suspected within ``horizon`` distinct queries by ``false_alarm``.
    """
    from scipy.stats import beta  # build-time only; the core stays numpy-only

    sizes = [len(r) for r in reference if len(r)]
    if not sizes:
        raise ValueError("account calibration needs at least one class with reference scores")
    delta = false_alarm / len(sizes)
    bounds = []
    for n in sizes:
        k = int(np.floor(level * (n + 1)))
        bounds.append(1.0 if k == 0 else float(beta.ppf(1.0 - delta, k, n + 1 - k)))
    p0 = max(bounds)
    if p0 >= p1:
        raise ValueError(
            f"too few calibration scores per class ({min(sizes)}) for level {level}: the honest "
            f"rate bound {p0:.2f} reaches the thief's rate {p1}; use a larger calibration split"
        )
    return AccountSettings(
        level=level, p0=round(p0, 4), p1=p1, h=float(np.log(horizon / false_alarm))
    )


def testable_references(
    reference: list[list[float]],
    level: float = AccountSettings.level,
    p1: float = AccountSettings.p1,
    false_alarm: float = 1e-3,
) -> tuple[list[list[float]], list[int]]:
    """Empty the classes whose few reference scores cannot bound the honest exceedance rate
    below ``p1`` (see :func:`account_settings_for`); returns the references and the classes
    left out. A small calibration split then weakens the test for those classes only instead
    of making the build fail."""
    from scipy.stats import beta

    classes = max(1, sum(1 for r in reference if len(r)))
    delta = false_alarm / classes
    out, left_out = [], []
    for c, r in enumerate(reference):
        k = int(np.floor(level * (len(r) + 1)))
        if len(r) and (k == 0 or beta.ppf(1.0 - delta, k, len(r) + 1 - k) >= p1):
            out.append([])
            left_out.append(c)
        else:
            out.append(r)
    return out, left_out


def calibrate(
    runner: GraphRunner,
    calibration_images: np.ndarray,
    test_images: np.ndarray,
    alpha: float,
    target_fpr: float,
    num_classes: int,
) -> dict:
    """Threshold at ``target_fpr`` and the account references: the manifest's calibration."""
    out = runner.run(calibration_images)
    scores = same_score(out.recon_error, out.logits, out.shadow_logits, alpha)
    threshold = threshold_at_fpr(scores, target_fpr)
    test = runner.run(test_images)
    test_scores = same_score(test.recon_error, test.logits, test.shadow_logits, alpha)
    reference, left_out = testable_references(
        class_references(scores, out.logits.argmax(axis=1), num_classes)
    )
    if left_out:
        warnings.warn(
            f"account test: classes {left_out} have too few calibration scores to bound the "
            f"honest rate below p1 and are left out of it (their queries never count as "
            f"exceedances); a larger calibration split brings them in",
            stacklevel=2,
        )
    usable = any(len(r) for r in reference)
    if not usable:
        warnings.warn("account test disabled: no class has enough calibration scores", stacklevel=2)
    return {
        "threshold": threshold,
        "alpha": alpha,
        "target_fpr": target_fpr,
        "calibration_fpr": false_positive_rate(scores, threshold),
        "test_fpr_offline": false_positive_rate(test_scores, threshold),
        "n_calibration": len(calibration_images),
        "accounts": {
            "reference": reference,
            "settings": account_settings_for(reference).to_dict() if usable else None,
            "classes_left_out": left_out,
        },
    }
