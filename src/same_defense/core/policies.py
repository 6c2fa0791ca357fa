"""Response policies: what the service answers once a query's SAME score is known.

Every policy maps ``(probs, scores, threshold)`` to the probabilities and labels the client
receives. Queries whose score is at or below the threshold get the true answer from every
policy except ``misinformation``, whose gate is smooth (as in Adaptive Misinformation) but
negligible well below the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICY_NAMES = ("monitor", "reject", "top1", "reverse_sigmoid", "misinformation")

# LABEL returned for a rejected query: no class at all.
REJECTED_LABEL = -1

_EPS = 1e-9


@dataclass(frozen=True)
class PolicyParams:
    """Knobs of the policies; defaults follow the references (ART, Kariyappa & Qureshi)."""

    # reverse sigmoid (Lee et al. 2019, ART's defaults)
    beta: float = 1.0
    gamma: float = 0.1
    # misinformation gate h = sigmoid(nu * log(score / (margin * threshold)))
    nu: float = 10.0
    # Centre of the gate as a multiple of the threshold. Above 1 so that benign queries just
    # over the threshold (the calibrated false positives) keep their true label: measured on
    # MNIST, 1.0 cost benign users 1.1 points of accuracy, 1.25 cost 0.13.
    margin: float = 1.25


def _normalize(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.where(total > 0, p / np.maximum(total, _EPS), uniform)


def reverse_sigmoid(probs: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    """ART's ReverseSigmoid: ``p' = normalize(clip(p - beta * (sigmoid(-gamma * L) - 0.5)))``

    with ``L = log((1 - p) / p)``.
    """
    p = np.clip(probs.astype(np.float64), _EPS, 1.0 - _EPS)
    log_odds_against = np.log((1.0 - p) / p)
    r = beta * (1.0 / (1.0 + np.exp(gamma * log_odds_against)) - 0.5)
    return _normalize(np.clip(p - r, 0.0, 1.0))


def misinformation_target(probs: np.ndarray) -> np.ndarray:
    """A distribution that avoids the predicted class: mass on the least likely classes.

    ``y_mis ~ 1 / p`` over the non-top classes (the softmax of the negated logits), so the
    wrong answer is deterministic per query: repeating a query cannot average it away.
    """
    p = np.clip(probs.astype(np.float64), 1e-6, 1.0)
    inverse = 1.0 / p
    inverse[np.arange(len(p)), p.argmax(axis=1)] = 0.0
    return _normalize(inverse)


def misinformation_gate(
    scores: np.ndarray, threshold: float, nu: float, margin: float
) -> np.ndarray:
    """Smooth gate in [0, 1]: 0.5 at ``score = margin * threshold``, steepness ``nu``."""
    ratio = np.maximum(scores.astype(np.float64), _EPS) / max(margin * threshold, _EPS)
    return 1.0 / (1.0 + np.exp(-nu * np.log(ratio)))


def apply_policy(
    policy: str,
    probs: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    params: PolicyParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(probs_out float32 [N, C], labels int64 [N])`` for the named policy."""
    params = params or PolicyParams()
    probs = np.asarray(probs, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    flagged = scores > threshold
    out = probs.copy()
    if policy == "monitor":
        pass
    elif policy == "reject":
        out[flagged] = 1.0 / probs.shape[1]
    elif policy == "top1":
        onehot = np.zeros_like(probs)
        onehot[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
        out[flagged] = onehot[flagged]
    elif policy == "reverse_sigmoid":
        out[flagged] = reverse_sigmoid(probs[flagged], params.beta, params.gamma)
    elif policy == "misinformation":
        h = misinformation_gate(scores, threshold, params.nu, params.margin)
        out = mix_misinformation(probs, h)
    else:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICY_NAMES)}")
    labels = out.argmax(axis=1).astype(np.int64)
    if policy == "reject":
        labels[flagged] = REJECTED_LABEL
    return out.astype(np.float32), labels


def max_softmax_gate(probs: np.ndarray, tau: float, nu: float) -> np.ndarray:
    """Adaptive Misinformation's own gate (Kariyappa & Qureshi): ``sigmoid(nu * (tau - max p))``.

    The published baseline that SAME's score-driven gate replaces: queries the victim is
    unsure about (max-softmax below ``tau``) get misinformation.
    """
    top = np.asarray(probs, dtype=np.float64).max(axis=1)
    return 1.0 / (1.0 + np.exp(-nu * (tau - top)))


def mix_misinformation(probs: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``(1 - h) p + h y_mis`` per row, with ``y_mis`` from :func:`misinformation_target`."""
    p = np.asarray(probs, dtype=np.float64)
    gate = np.asarray(h, dtype=np.float64).reshape(-1, 1)
    return (1.0 - gate) * p + gate * misinformation_target(p)


def shifted_misinformation_target(probs: np.ndarray, shift: int = 1) -> np.ndarray:
    """One-hot of ``(predicted class + shift) mod C``: a wrong answer that is *consistent*
    across queries (every flagged "3" answered "4"), which a thief cannot average out as
    label noise. An evaluated alternative to :func:`misinformation_target`, not served."""
    p = np.asarray(probs, dtype=np.float64)
    out = np.zeros_like(p)
    out[np.arange(len(p)), (p.argmax(axis=1) + shift) % p.shape[1]] = 1.0
    return out
