"""One call from the graphs' outputs to the answer: validate, score, flag, respond.

The Triton defense step and the in-process pipeline both call :func:`defend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .policies import POLICY_NAMES, PolicyParams, apply_policy
from .score import same_score, softmax


@dataclass(frozen=True)
class DefenseSettings:
    threshold: float
    alpha: float = 0.99
    policy: str = "misinformation"
    params: PolicyParams = field(default_factory=PolicyParams)

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(
                f"unknown policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}"
            )
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")


@dataclass(frozen=True)
class Decision:
    probs: np.ndarray  # float32 [N, C], what the client receives
    labels: np.ndarray  # int64 [N], what the client receives
    scores: np.ndarray  # float64 [N], stays on the server
    flagged: np.ndarray  # bool [N], stays on the server
    true_probs: np.ndarray  # float32 [N, C], the victim's real answer


def defend(
    victim_logits: np.ndarray,
    recon_error: np.ndarray,
    shadow_logits: np.ndarray,
    settings: DefenseSettings,
) -> Decision:
    scores = same_score(recon_error, victim_logits, shadow_logits, settings.alpha)
    true_probs = softmax(victim_logits)
    probs, labels = apply_policy(
        settings.policy, true_probs, scores, settings.threshold, settings.params
    )
    return Decision(probs, labels, scores, scores > settings.threshold, true_probs)
