"""One call from the graphs' outputs to the answer: score, flag, respond, rank for accounts.

The Triton defense step and the in-process pipeline both call :func:`defend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .accounts import score_pvalues
from .policies import POLICY_NAMES, PolicyParams, apply_policy
from .score import same_score, softmax

# Default served policy and SAME weight, defined once (the build and the configs use these).
DEFAULT_POLICY = "misinformation"
DEFAULT_ALPHA = 0.99


@dataclass(frozen=True)
class DefenseSettings:
    """How the defense answers: flag threshold, SAME weight ``alpha``, policy and its knobs.

    Raises ``ValueError`` for an unknown policy or a non-finite threshold, so a bad config
    fails when the model loads rather than on the first query.
    """

    threshold: float
    alpha: float = DEFAULT_ALPHA
    policy: str = DEFAULT_POLICY
    params: PolicyParams = field(default_factory=PolicyParams)
    # Calibration scores per predicted class (sorted), for the account-level p-values.
    reference: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(
                f"unknown policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}"
            )
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")


@dataclass(frozen=True)
class Decision:
    """The defense's answer to a batch: what the client receives and what stays on the server."""

    probs: np.ndarray  # float32 [N, C], what the client receives
    labels: np.ndarray  # int64 [N], what the client receives
    scores: np.ndarray  # float64 [N], stays on the server
    flagged: np.ndarray  # bool [N], stays on the server
    true_probs: np.ndarray  # float32 [N, C], the victim's real answer
    # float64 [N], class-conditional p-values for the account test; stays on the server
    pvalues: np.ndarray | None = None


def defend(
    victim_logits: np.ndarray,
    recon_error: np.ndarray,
    shadow_logits: np.ndarray,
    settings: DefenseSettings,
    force: bool = False,
) -> Decision:
    """Score each query and answer it with the settings' policy.

    Args:
        victim_logits: The victim's logits, ``[N, C]``.
        recon_error: The reconstructor's error per query, ``[N]``.
        shadow_logits: The shadow model's logits on the reconstructions, ``[N, C]``.
        settings: Threshold, ``alpha``, policy and the account references.
        force: Answer every query with the policy, whatever its own score (the caller's
            account is under suspicion).
    """
    scores = same_score(recon_error, victim_logits, shadow_logits, settings.alpha)
    true_probs = softmax(victim_logits)
    probs, labels = apply_policy(
        settings.policy,
        true_probs,
        scores,
        settings.threshold,
        settings.params,
        logits=victim_logits,
        force=force,
    )
    predicted = np.asarray(victim_logits).argmax(axis=1)
    pvalues = (
        score_pvalues(scores, predicted, list(settings.reference))
        if settings.reference
        else np.ones(len(scores))
    )
    return Decision(probs, labels, scores, scores > settings.threshold, true_probs, pvalues)
