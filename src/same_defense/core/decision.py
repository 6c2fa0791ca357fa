"""One call from the graphs' outputs to the answer: check, score, flag, respond, rank.

:func:`defend_requests` is the single entry the Triton defense step and the in-process
pipeline call: it checks each request's inputs, then scores and answers the valid ones with
:func:`defend` in one vectorised call per account state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .accounts import REVIEW, SUSPECTED, TIERS, account_evidence, score_pvalues
from .layout import DEFAULT_POLICY
from .policies import POLICY_NAMES, PolicyParams, apply_policy
from .score import same_score, softmax
from .validation import describe_problems, find_input_problems

# The SAME weight, defined once (the build and the configs use it; the default policy is in
# the repository contract, .layout).
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

    def rows(self, start: int, end: int) -> Decision:
        """The decision for queries ``start`` to ``end`` (one request of a batch)."""
        pick = slice(start, end)
        pvalues = None if self.pvalues is None else self.pvalues[pick]
        return Decision(
            self.probs[pick],
            self.labels[pick],
            self.scores[pick],
            self.flagged[pick],
            self.true_probs[pick],
            pvalues,
        )

    def evidence(self) -> np.ndarray:
        """The ``[N, 4]`` evidence the gateway's account test reads (p, class, flag, top-1)."""
        pvalues = np.ones(len(self.scores)) if self.pvalues is None else self.pvalues
        return account_evidence(
            pvalues, self.true_probs.argmax(axis=1), self.flagged, self.true_probs.max(axis=1)
        )


def as_tier(value: bool | str) -> str:
    """A tier from a request's account state: True (legacy "forced") is ``suspected``."""
    if value is True:
        return SUSPECTED
    if not value:
        return ""
    if value not in TIERS:
        raise ValueError(f"unknown account tier {value!r}; choose one of {TIERS}")
    return str(value)


def defend(
    victim_logits: np.ndarray,
    recon_error: np.ndarray,
    shadow_logits: np.ndarray,
    settings: DefenseSettings,
    force: bool | str = False,
) -> Decision:
    """Score each query and answer it with the settings' policy, or as its account's tier.

    Args:
        victim_logits: The victim's logits, ``[N, C]``.
        recon_error: The reconstructor's error per query, ``[N]``.
        shadow_logits: The shadow model's logits on the reconstructions, ``[N, C]``.
        settings: Threshold, ``alpha``, policy and the account references.
        force: The caller's account tier (:func:`as_tier`): ``""`` answers flagged queries
            with ``params.first_response`` (top-1 label by default); ``"review"`` answers
            every query with its top-1 label only (information, not correctness, is
            withheld); ``"suspected"`` (or True) answers every query with the policy.
    """
    tier = as_tier(force)
    scores = same_score(recon_error, victim_logits, shadow_logits, settings.alpha)
    true_probs = softmax(victim_logits)
    policy = settings.policy
    if policy != "monitor":  # monitor answers truthfully at every tier: it only counts
        if tier == REVIEW:
            policy = "top1"
        elif not tier and settings.params.first_response != "policy":
            policy = settings.params.first_response
    probs, labels = apply_policy(
        policy,
        true_probs,
        scores,
        settings.threshold,
        settings.params,
        logits=victim_logits,
        force=bool(tier),
    )
    predicted = np.asarray(victim_logits).argmax(axis=1)
    pvalues = (
        score_pvalues(scores, predicted, list(settings.reference))
        if settings.reference
        else np.ones(len(scores))
    )
    return Decision(probs, labels, scores, scores > settings.threshold, true_probs, pvalues)


class InvalidInput(ValueError):
    """A request's images break the input contract (NaN/Inf, pixels outside [0, 1])."""


@dataclass(frozen=True)
class GraphArrays:
    """One request's graph outputs: what the defense step receives from the ensemble."""

    logits: np.ndarray  # [N, C] victim logits
    recon_error: np.ndarray  # [N, 1] reconstruction error
    shadow_logits: np.ndarray  # [N, C] shadow logits on the reconstructions
    input_stats: np.ndarray  # [N, 3] non-finite count, min, max per image

    def __len__(self) -> int:
        return len(self.logits)


def check_inputs(input_stats: np.ndarray) -> None:
    """Raise :class:`InvalidInput` naming the bad samples, if any."""
    problems = find_input_problems(input_stats)
    if problems:
        raise InvalidInput(describe_problems(problems))


def defend_requests(
    requests: list[GraphArrays], settings: DefenseSettings, forced: list[bool | str]
) -> list[Decision | InvalidInput]:
    """Check every request, then answer the valid ones, one :func:`defend` call per state.

    Args:
        requests: The graph outputs of each request (dynamic batching hands over several).
        settings: Threshold, ``alpha``, policy and the account references.
        forced: Per request, its account's tier (:func:`as_tier`: "", "review", "suspected").

    Returns:
        Per request, in order, its :class:`Decision` or the :class:`InvalidInput` it raised.
    """
    results: list[Decision | InvalidInput | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {tier: [] for tier in TIERS}
    for i, request in enumerate(requests):
        try:
            check_inputs(request.input_stats)
        except InvalidInput as exc:
            results[i] = exc
            continue
        groups[as_tier(forced[i])].append(i)
    for force, members in groups.items():
        if not members:
            continue
        decision = defend(
            np.concatenate([requests[i].logits for i in members]),
            np.concatenate([requests[i].recon_error for i in members]),
            np.concatenate([requests[i].shadow_logits for i in members]),
            settings,
            force=force,
        )
        start = 0
        for i in members:
            end = start + len(requests[i])
            results[i] = decision.rows(start, end)
            start = end
    return results  # type: ignore[return-value]
