"""Triton Python step of the ``same`` ensemble: check input, score, flag, respond, count.

Runs in any Triton with numpy (the NGC container or the embedded server). The logic lives in
``same_core`` beside this file: a verbatim copy of ``same_defense.core`` written by the export
step, the same code that offline evaluation runs. The score and the flag never leave the server;
they are only counted in Prometheus metrics on Triton's metrics port.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from same_core import (  # noqa: E402  (needs the path above)
    MANIFEST_NAME,
    DefenseSettings,
    defend,
    describe_problems,
    find_input_problems,
    load_verified_manifest,
    settings_from_manifest,
)

INPUTS = ("LOGITS", "RECON_ERROR", "SHADOW_LOGITS", "INPUT_STATS")
# Score histogram buckets as multiples of the calibrated threshold (1.0 = the flag line).
BUCKETS_X_THRESHOLD = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 64.0)


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
            f"alpha={self.settings.alpha}"
        )

    def _init_metrics(self, model_name):
        labels = {"model": model_name, "policy": self.settings.policy}
        scored = pb_utils.MetricFamily(
            name="same_queries_scored_total",
            description="Queries scored by the SAME defense step",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        flagged = pb_utils.MetricFamily(
            name="same_queries_flagged_total",
            description="Queries whose SAME score exceeded the calibrated threshold",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        rejected = pb_utils.MetricFamily(
            name="same_requests_invalid_total",
            description="Requests refused for invalid input (NaN/Inf or out-of-range pixels)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        # The families must outlive their metrics: keep references on the instance.
        self._families = [scored, flagged, rejected]
        self.scored = scored.Metric(labels=labels)
        self.flagged = flagged.Metric(labels=labels)
        self.invalid = rejected.Metric(labels=labels)
        buckets = [b * self.settings.threshold for b in BUCKETS_X_THRESHOLD]
        score = pb_utils.MetricFamily(
            name="same_score",
            description=f"Distribution of SAME scores (threshold = {self.settings.threshold:.6g})",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self._families.append(score)
        self.score_histogram = score.Metric(labels=labels, buckets=buckets)

    def execute(self, requests):
        # Dynamic batching hands over several requests: score them in one vectorised call.
        arrays, sizes, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            tensors = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in INPUTS]
            problems = find_input_problems(tensors[3])
            if problems:
                self.invalid.increment(1)
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        describe_problems(problems), pb_utils.TritonError.INVALID_ARG
                    )
                )
                continue
            arrays.append(tensors)
            sizes.append((i, len(tensors[0])))
        if arrays:
            logits, error, shadow, _ = (
                np.concatenate(parts) for parts in zip(*arrays, strict=True)
            )
            decision = defend(logits, error, shadow, self.settings)
            # Each metric call is a round trip to the server process (about 0.5 ms of wall
            # time on the loaded 2-core machine): skip the ones that would add nothing.
            self.scored.increment(len(decision.scores))
            flagged = int(decision.flagged.sum())
            if flagged:
                self.flagged.increment(flagged)
            for s in decision.scores:
                self.score_histogram.observe(float(s))
            start = 0
            for i, n in sizes:
                probs = pb_utils.Tensor("PROBS", decision.probs[start : start + n])
                labels = pb_utils.Tensor("LABEL", decision.labels[start : start + n, None])
                responses[i] = pb_utils.InferenceResponse(output_tensors=[probs, labels])
                start += n
        return responses
