"""Calibration on benign queries: the per-query threshold at a target false-positive rate, and
the class-conditional references and settings of the account-level test."""

from __future__ import annotations

import warnings

import numpy as np

from ..core.accounts import AccountSettings
from ..core.score import same_score
from ..runtime.inprocess import GraphRunner


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


def exceedance_bound(n: int, level: float, delta: float) -> float:
    """Upper ``1 - delta`` bound of the honest rate of ``p <= level`` for a class of ``n``.

    With ``n`` reference scores that rate is ``Beta(k, n + 1 - k)`` distributed over the draw
    of the reference, ``k = floor(level (n + 1))`` (a finite reference sits low or high by
    chance). Kept below 1 so that the CUSUM step stays finite: a class too small for a level
    simply gains nothing at that level.
    """
    from scipy.stats import beta  # build-time only; the core stays numpy-only

    k = int(np.floor(level * (n + 1)))
    bound = 1.0 if n == 0 or k == 0 else float(beta.ppf(1.0 - delta, k, n + 1 - k))
    return round(min(max(bound, 1e-6), 0.999), 4)


def account_settings_for(
    reference: list[list[float]],
    levels: tuple[float, ...] = AccountSettings.levels,
    lifts: tuple[float, ...] = AccountSettings.lifts,
    horizon: int = 1000,
    false_alarm: float = 1e-3,
    calibration_risk: float = 1e-3,
) -> AccountSettings:
    """The account test's settings for this calibration set.

    ``bounds[c][j]`` bounds class ``c``'s honest rate at ``levels[j]``
    (:func:`exceedance_bound`), all bounds holding together with probability
    ``1 - calibration_risk`` over the draw of the calibration split (a union over classes and
    levels). ``h = log(horizon * K / false_alarm)`` bounds the chance that an honest account
    is suspected within ``horizon`` distinct queries by ``false_alarm``, for the ``K`` CUSUMs
    together.
    """
    sizes = [len(r) for r in reference]
    if not any(sizes):
        raise ValueError("account calibration needs at least one class with reference scores")
    delta = calibration_risk / (len(sizes) * len(levels))
    bounds = tuple(tuple(exceedance_bound(n, t, delta) for t in levels) for n in sizes)
    statistics = len(levels) * len(lifts)
    return AccountSettings(
        levels=tuple(levels),
        bounds=bounds,
        lifts=tuple(lifts),
        # rounded up: the stated bound must hold for the stored number
        h=float(np.ceil(np.log(horizon * statistics / false_alarm) * 1e4) / 1e4),
    )


def testable_references(reference: list[list[float]]) -> tuple[list[list[float]], list[int]]:
    """The references and the classes without a single calibration score (their queries get
    p = 1 and never exceed; a larger calibration split brings them in)."""
    left_out = [c for c, r in enumerate(reference) if not len(r)]
    return reference, left_out


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
            f"account test: classes {left_out} have no calibration scores and are left out "
            f"of it (their queries never count as exceedances); a larger calibration split "
            f"brings them in",
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
