"""Triton Python step of the ``same`` ensemble: check input, score, flag, respond, count.

Runs in any Triton with numpy (the NGC container or the embedded server). The logic lives in
``same_core`` beside this file: a verbatim copy of ``same_defense.core`` written by the export
step, the same code that offline evaluation runs. The score and the flag never reach a client:
they are counted in Prometheus metrics, and each query's class-conditional p-value, predicted
class and flag go out as the internal ``ACCOUNT_PVALUE`` output, which only the gateway may
request (it strips it and feeds the account-level test). A request that carries the parameter
``same_account_state`` (set by the gateway alone) is answered as that account tier: ``review``
with top-1 labels only, ``suspected`` with the policy for every query, whatever its score.
The query counters go to Prometheus with each execute; the score histogram at most every
``METRICS_FLUSH_S`` (``same_core/counts.py``).
"""

import json
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from same_core import (  # noqa: E402  (needs the path above)
    ACCOUNT_OUTPUT,
    ACCOUNT_PARAMETER,
    DEFAULT_POLICY,
    DEFENSE_INPUTS,
    FLAGGED_METRIC,
    FORCED_METRIC,
    INVALID_METRIC,
    LABEL,
    METRICS_FLUSH_S,
    PROBS,
    SCORE_METRIC,
    SCORED_METRIC,
    TIERS,
    DefenseCounts,
    DefenseSettings,
    GraphArrays,
    InvalidInput,
    defend_requests,
    load_verified_manifest,
    score_buckets,
    settings_from_manifest,
)


def _account_tier(request) -> str:
    try:
        tier = json.loads(request.parameters() or "{}").get(ACCOUNT_PARAMETER, "")
    except (ValueError, AttributeError):
        return ""
    return tier if tier in TIERS else ""


class _Metrics:
    """The step's Prometheus metrics: query counters per execute, the histogram throttled.

    Each metric update is a round trip to the server process. The query counters (scored,
    flagged, refused, forced) are sent with every execute, only those that changed, so a
    reader sees them as soon as the answers are out. The score histogram, which cost one
    round trip per image, is added up in a :class:`DefenseCounts` and sent from within an
    execute at most every ``METRICS_FLUSH_S`` (core/counts.py). Not from a background thread:
    a stub killed while such a thread's metric message was in flight took tritonserver down
    with it (a boost lock_exception in the Python backend; tests/test_faults.py).
    """

    def __init__(self, model_name, settings):
        labels = {"model": model_name, "policy": settings.policy}
        self._families = []  # families must outlive their metrics
        self.scored = self._counter(
            SCORED_METRIC, "Queries scored by the SAME defense step", labels
        )
        self.flagged = self._counter(
            FLAGGED_METRIC,
            "Queries whose SAME score exceeded the calibrated threshold",
            labels,
        )
        self.invalid = self._counter(
            INVALID_METRIC,
            "Requests refused for invalid input (NaN/Inf or out-of-range pixels)",
            labels,
        )
        self.forced = self._counter(
            FORCED_METRIC,
            "Queries from accounts under suspicion, all answered with the policy",
            labels,
        )
        about = f"SAME scores (threshold = {settings.threshold:.6g})"
        self.pending = DefenseCounts(score_buckets(settings.threshold))
        bucket_family = self._family(f"{SCORE_METRIC}_bucket", f"{about}: cumulative buckets")
        self.buckets = [
            bucket_family.Metric(labels={**labels, "le": le})
            for le, _ in self.pending.cumulative_buckets()
        ]
        self.score_sum = self._family(f"{SCORE_METRIC}_sum", f"{about}: sum").Metric(labels=labels)
        self.score_count = self._family(f"{SCORE_METRIC}_count", f"{about}: count").Metric(
            labels=labels
        )
        self._last_flush = time.monotonic()

    def _family(self, name, description):
        family = pb_utils.MetricFamily(
            name=name, description=description, kind=pb_utils.MetricFamily.COUNTER
        )
        self._families.append(family)
        return family

    def _counter(self, name, description, labels):
        return self._family(name, description).Metric(labels=labels)

    def add(self, results, forced):
        """Count one execute's answers: counters now, the histogram when it is due."""
        counts = DefenseCounts(self.pending.bucket_bounds)
        for result, force in zip(results, forced, strict=True):
            if isinstance(result, InvalidInput):
                counts.add_invalid(1)
            else:
                counts.add_scores(result.scores, result.flagged, bool(force))
        for metric, value in (
            (self.scored, counts.scored),
            (self.flagged, counts.flagged),
            (self.invalid, counts.invalid),
            (self.forced, counts.forced),
        ):
            if value:
                metric.increment(value)
        self.pending.merge(counts)
        if time.monotonic() - self._last_flush >= METRICS_FLUSH_S:
            self.flush_histogram()

    def flush_histogram(self):
        """Send the scores added up since the last flush (sum, count, cumulative buckets)."""
        self._last_flush = time.monotonic()
        counts = self.pending.take()
        if not counts.scored:
            return
        self.score_count.increment(counts.scored)
        self.score_sum.increment(counts.score_sum)
        for metric, (_, value) in zip(self.buckets, counts.cumulative_buckets(), strict=True):
            if value:
                metric.increment(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = args["model_repository"]
        manifest = load_verified_manifest(os.path.dirname(model_dir))
        policy = params.pop("policy", DEFAULT_POLICY)
        self.settings: DefenseSettings = settings_from_manifest(manifest, policy, params)
        self.metrics = _Metrics(config["name"], self.settings)
        pb_utils.Logger.log_info(
            f"SAME defense: policy={policy} threshold={self.settings.threshold:.6g} "
            f"alpha={self.settings.alpha} account_reference={bool(self.settings.reference)}"
        )

    def execute(self, requests):
        # Dynamic batching hands over several requests: the core checks each one and scores
        # the valid ones in one vectorised call per account state (normal, suspected).
        arrays = [
            GraphArrays(
                *(pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in DEFENSE_INPUTS)
            )
            for r in requests
        ]
        forced = [_account_tier(r) for r in requests]
        results = defend_requests(arrays, self.settings, forced)
        self.metrics.add(results, forced)
        return [self._response(result) for result in results]

    def finalize(self):
        self.metrics.flush_histogram()

    def _response(self, result):
        if isinstance(result, InvalidInput):
            error = pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        outputs = [
            pb_utils.Tensor(PROBS, result.probs),
            pb_utils.Tensor(LABEL, result.labels[:, None]),
            pb_utils.Tensor(ACCOUNT_OUTPUT, result.evidence().astype(np.float32)),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)
