"""numpy-only heart of the defense: input checks, the SAME score and response policies.

This sub-package imports nothing but numpy and the standard library, because the export step
copies it verbatim into ``model_repository/defense/1/same_core`` so that the Triton Python
step runs it in any Triton (the NGC container has numpy, not this project). Offline evaluation
imports the very same files from here, so the served and the evaluated defense cannot drift.
"""

from .accounts import (
    ACCOUNT_OUTPUT_WIDTH,
    REVIEW,
    SUSPECTED,
    TIERS,
    AccountSettings,
    AccountState,
    account_evidence,
    clear_suspicion,
    confirm_suspicion,
    reference_from_manifest,
    score_pvalues,
    update_state,
)
from .counts import METRICS_FLUSH_S, DefenseCounts, score_buckets
from .decision import (
    DEFAULT_ALPHA,
    Decision,
    DefenseSettings,
    GraphArrays,
    InvalidInput,
    as_tier,
    check_inputs,
    defend,
    defend_requests,
)
from .layout import (
    ACCOUNT_OUTPUT,
    ACCOUNT_PARAMETER,
    DEFAULT_POLICY,
    DEFENSE_INPUTS,
    FLAGGED_METRIC,
    FORCED_METRIC,
    INVALID_METRIC,
    LABEL,
    PROBS,
    SCORE_METRIC,
    SCORED_METRIC,
)
from .manifest import (
    ManifestError,
    load_verified_manifest,
    read_manifest,
    settings_from_manifest,
)
from .policies import POLICY_NAMES, PolicyParams, apply_policy
from .score import kl_divergence, same_score, softmax
from .validation import InputProblem, describe_problems, find_input_problems

__all__ = [
    "ACCOUNT_OUTPUT",
    "ACCOUNT_OUTPUT_WIDTH",
    "ACCOUNT_PARAMETER",
    "REVIEW",
    "SUSPECTED",
    "TIERS",
    "DEFAULT_ALPHA",
    "DEFAULT_POLICY",
    "METRICS_FLUSH_S",
    "DefenseCounts",
    "score_buckets",
    "AccountSettings",
    "AccountState",
    "account_evidence",
    "clear_suspicion",
    "confirm_suspicion",
    "reference_from_manifest",
    "score_pvalues",
    "update_state",
    "DEFENSE_INPUTS",
    "FLAGGED_METRIC",
    "FORCED_METRIC",
    "INVALID_METRIC",
    "LABEL",
    "PROBS",
    "SCORE_METRIC",
    "SCORED_METRIC",
    "POLICY_NAMES",
    "Decision",
    "DefenseSettings",
    "GraphArrays",
    "InvalidInput",
    "as_tier",
    "check_inputs",
    "defend_requests",
    "InputProblem",
    "ManifestError",
    "PolicyParams",
    "apply_policy",
    "defend",
    "describe_problems",
    "find_input_problems",
    "kl_divergence",
    "load_verified_manifest",
    "read_manifest",
    "same_score",
    "settings_from_manifest",
    "softmax",
]
