"""Triton Python step of the ``same`` ensemble: check input, score, flag, respond, count.

Runs in any Triton with numpy (the NGC container or the embedded server). The logic lives in
``same_core`` beside this file: a verbatim copy of ``same_defense.core`` written by the export
step, the same code that offline evaluation runs. The score and the flag never reach a client:
they are counted in Prometheus metrics, and the class-conditional p-value of each score goes
out as the internal ``ACCOUNT_PVALUE`` output, which only the gateway may request (it strips
it and feeds the account-level test). A request that carries the parameter
``same_account_state: suspected`` (set by the gateway alone) is answered with the policy for
every query, whatever its own score.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from same_core import (  # noqa: E402  (needs the path above)
    ACCOUNT_OUTPUT,
    ACCOUNT_PARAMETER,
    MANIFEST_NAME,
    SUSPECTED,
    DefenseSettings,
    GraphArrays,
    InvalidInput,
    defend_requests,
    load_verified_manifest,
    settings_from_manifest,
)

INPUTS = ("LOGITS", "RECON_ERROR", "SHADOW_LOGITS", "INPUT_STATS")
# Score histogram buckets as multiples of the calibrated threshold (1.0 = the flag line).
BUCKETS_X_THRESHOLD = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 64.0)


def _is_suspected(request) -> bool:
    try:
        return json.loads(request.parameters() or "{}").get(ACCOUNT_PARAMETER) == SUSPECTED
    except (ValueError, AttributeError):
        return False


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = args["model_repository"]
        version_dir = os.path.join(model_dir, args["model_version"])
        manifest = load_verified_manifest(
            repository_root=os.path.dirname(model_dir),
            manifest_path=os.path.join(version_dir, MANIFEST_NAME),
        )
        policy = params.pop("policy", "misinformation")
        self.settings: DefenseSettings = settings_from_manifest(manifest, policy, params)
        self._init_metrics(config["name"])
        pb_utils.Logger.log_info(
            f"SAME defense: policy={policy} threshold={self.settings.threshold:.6g} "
            f"alpha={self.settings.alpha} account_reference={bool(self.settings.reference)}"
        )

    def _counter(self, name, description, labels):
        family = pb_utils.MetricFamily(
            name=name, description=description, kind=pb_utils.MetricFamily.COUNTER
        )
        self._families.append(family)  # families must outlive their metrics
        return family.Metric(labels=labels)

    def _init_metrics(self, model_name):
        labels = {"model": model_name, "policy": self.settings.policy}
        self._families = []
        self.scored = self._counter(
            "same_queries_scored_total", "Queries scored by the SAME defense step", labels
        )
        self.flagged = self._counter(
            "same_queries_flagged_total",
            "Queries whose SAME score exceeded the calibrated threshold",
            labels,
        )
        self.invalid = self._counter(
            "same_requests_invalid_total",
            "Requests refused for invalid input (NaN/Inf or out-of-range pixels)",
            labels,
        )
        self.forced = self._counter(
            "same_queries_suspected_account_total",
            "Queries from accounts under suspicion, all answered with the policy",
            labels,
        )
        buckets = [b * self.settings.threshold for b in BUCKETS_X_THRESHOLD]
        score = pb_utils.MetricFamily(
            name="same_score",
            description=f"Distribution of SAME scores (threshold = {self.settings.threshold:.6g})",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self._families.append(score)
        self.score_histogram = score.Metric(labels=labels, buckets=buckets)

    def execute(self, requests):
        # Dynamic batching hands over several requests: the core checks each one and scores
        # the valid ones in one vectorised call per account state (normal, suspected).
        arrays = [
            GraphArrays(*(pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in INPUTS))
            for r in requests
        ]
        forced = [_is_suspected(r) for r in requests]
        results = defend_requests(arrays, self.settings, forced)
        self._count(results, forced)
        return [self._response(result) for result in results]

    def _response(self, result):
        if isinstance(result, InvalidInput):
            error = pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        outputs = [
            pb_utils.Tensor("PROBS", result.probs),
            pb_utils.Tensor("LABEL", result.labels[:, None]),
            pb_utils.Tensor(ACCOUNT_OUTPUT, result.pvalues.astype(np.float32)[:, None]),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _count(self, results, forced):
        # Each metric call is a round trip to the server process (about 0.5 ms of wall time
        # on the loaded 2-core machine): skip the ones that would add nothing.
        invalid = sum(isinstance(r, InvalidInput) for r in results)
        if invalid:
            self.invalid.increment(invalid)
        pairs = zip(results, forced, strict=True)
        answered = [(r, f) for r, f in pairs if not isinstance(r, InvalidInput)]
        if not answered:
            return
        scores = np.concatenate([d.scores for d, _ in answered])
        self.scored.increment(len(scores))
        flagged = int(sum(d.flagged.sum() for d, _ in answered))
        if flagged:
            self.flagged.increment(flagged)
        forced_queries = sum(len(d.scores) for d, f in answered if f)
        if forced_queries:
            self.forced.increment(forced_queries)
        for s in scores:
            self.score_histogram.observe(float(s))
