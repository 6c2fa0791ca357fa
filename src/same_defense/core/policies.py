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
# What a misinformed answer points to: "inverse" (mass ~ 1/p over the wrong classes, the
# least likely class first) or "shifted" (one-hot of predicted class + 1: consistent).
MISINFORMATION_TARGETS = ("inverse", "shifted")

FIRST_RESPONSES = ("top1", "policy", "monitor")

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
    target: str = "inverse"
    # How a flagged query is answered while its account has no evidence against it: "top1"
    # (the label, no probabilities: costs information, never correctness), "policy" (the
    # response policy per query, SAME as published) or "monitor" (the true answer). A
    # customer whose camera makes every image look foreign (a grey background: 94 % of its
    # queries flagged) keeps its labels with "top1"; with "policy" it lost most of them.
    first_response: str = "top1"

    def __post_init__(self) -> None:
        for name in ("beta", "gamma", "nu", "margin"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"policy parameter {name} must be a positive number, got {value}")
        if self.first_response not in FIRST_RESPONSES:
            raise ValueError(
                f"first_response must be one of {', '.join(FIRST_RESPONSES)}, "
                f"got {self.first_response!r}"
            )
        if self.target not in MISINFORMATION_TARGETS:
            raise ValueError(
                f"misinformation target must be one of {', '.join(MISINFORMATION_TARGETS)}, "
                f"got {self.target!r}"
            )


def _normalize(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.where(total > 0, p / np.maximum(total, _EPS), uniform)


def reverse_sigmoid(probs: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    """ART's ReverseSigmoid perturbation of ``probs``, renormalised per row.

    ``p' = normalize(clip(p - beta * (sigmoid(-gamma * L) - 0.5), 0, 1))`` with
    ``L = log((1 - p) / p)``.
    """
    p = np.clip(probs.astype(np.float64), _EPS, 1.0 - _EPS)
    log_odds_against = np.log((1.0 - p) / p)
    r = beta * (1.0 / (1.0 + np.exp(gamma * log_odds_against)) - 0.5)
    return _normalize(np.clip(p - r, 0.0, 1.0))


def misinformation_target(logits: np.ndarray) -> np.ndarray:
    """A distribution over the wrong classes: ``y_mis ~ 1 / p``, the least likely class first.

    Computed in float64 from the logits (``1 / p_j ~ exp(-z_j)``): clipping float32
    probabilities instead gave every wrong class of a confident answer the same mass, so the
    mixed answer changed its label only for gates above about 0.9. Deterministic per query, so
    repeating a query cannot average it away.
    """
    z = np.asarray(logits, dtype=np.float64)
    top = z.argmax(axis=1)
    neg = -z
    neg[np.arange(len(z)), top] = -np.inf
    neg -= neg.max(axis=1, keepdims=True)
    weights = np.exp(neg)
    return weights / weights.sum(axis=1, keepdims=True)


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
    logits: np.ndarray | None = None,
    force: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(probs_out float32 [N, C], labels int64 [N])`` for the named policy.

    ``logits`` (the victim's, when known) make the misinformation target exact in float64;
    without them it is derived from ``log(probs)``. ``force`` applies the policy to every
    query whatever its score: the answer for an account under suspicion.
    """
    params = params or PolicyParams()
    probs = np.asarray(probs, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    flagged = np.ones(len(scores), bool) if force else scores > threshold
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
        if force:
            h = np.ones(len(scores))
        else:
            h = misinformation_gate(scores, threshold, params.nu, params.margin)
        if params.target == "shifted":
            target = shifted_misinformation_target(probs)
        else:  # None: mix_misinformation derives it from log(probs)
            target = None if logits is None else misinformation_target(logits)
        out = mix_misinformation(probs, h, target)
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


def mix_misinformation(
    probs: np.ndarray, h: np.ndarray, target: np.ndarray | None = None
) -> np.ndarray:
    """Mix each row with a misinformation answer: ``(1 - h) p + h y_mis``.

    ``y_mis`` defaults to :func:`misinformation_target` of ``log(probs)``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if target is None:
        target = misinformation_target(np.log(np.maximum(p, np.finfo(np.float64).tiny)))
    gate = np.asarray(h, dtype=np.float64).reshape(-1, 1)
    return (1.0 - gate) * p + gate * target


def shifted_misinformation_target(probs: np.ndarray, shift: int = 1) -> np.ndarray:
    """One-hot of ``(predicted class + shift) mod C``: a wrong answer, the same every time.

    Being *consistent* across queries (every flagged "3" answered "4"), it cannot be averaged
    out by a thief as label noise. Served with ``target: "shifted"`` in the defense config.
    """
    p = np.asarray(probs, dtype=np.float64)
    out = np.zeros_like(p)
    out[np.arange(len(p)), (p.argmax(axis=1) + shift) % p.shape[1]] = 1.0
    return out
