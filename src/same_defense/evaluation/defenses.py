"""The defense configurations the evaluation compares, all over the same ONNX graph outputs.

- ``none``: the victim's true answer.
- ``same-<policy>``: SAME as served, via :func:`same_defense.core.defend` with each policy.
- ``rs-all`` / ``top1-all``: ART-style postprocessors applied to every query (the core's
  ``reverse_sigmoid`` / ``top1`` policies with every query treated as flagged).
- ``am-maxsoftmax``: Adaptive Misinformation as published, gated by the max-softmax with
  ``tau`` calibrated on the calibration split at the same target FPR as SAME.

Two variants that are *not* served, evaluated to see what the goals would need
(``--defenses``; not in the default matrix):

- ``same-misinfo-consistent``: SAME's gate, but the wrong answer is the one-hot of
  ``(predicted + 1) mod C``, consistent across queries instead of the least likely class;
- ``same-client-misinfo``: stateful per client: once the mean SAME score of a client's last
  ``window`` queries exceeds the highest such mean of the benign calibration stream, every
  later answer to that client is misinformation (SAME's per-query gate before that).

Graph outputs are memoised per image (:class:`CachedGraphs`): a non-adaptive attack's queries
run through the ONNX graphs once, whatever the number of defenses compared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from ..core import (
    Decision,
    DefenseSettings,
    PolicyParams,
    apply_policy,
    defend,
    describe_problems,
    find_input_problems,
    softmax,
)
from ..core.policies import (
    max_softmax_gate,
    misinformation_gate,
    misinformation_target,
    mix_misinformation,
    shifted_misinformation_target,
)
from ..core.score import same_score
from ..serving.inprocess import GraphOutputs, GraphRunner, InvalidInput

SAME_POLICIES = ("monitor", "reject", "top1", "reverse_sigmoid", "misinformation")
DEFENSE_NAMES = (
    "none",
    *(f"same-{p}" for p in SAME_POLICIES),
    "rs-all",
    "top1-all",
    "am-maxsoftmax",
)
EXPERIMENTAL_DEFENSES = ("same-misinfo-consistent", "same-client-misinfo")
CLIENT_WINDOW = 32


class CachedGraphs:
    """:class:`GraphRunner` with a per-image memo (keyed by the image's bytes)."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner
        self._memo: dict[bytes, tuple[np.ndarray, ...]] = {}
        self.computed = 0

    def run(self, images: np.ndarray) -> GraphOutputs:
        images = np.ascontiguousarray(images, dtype=np.float32)
        keys = [hashlib.sha1(row.tobytes()).digest() for row in images]
        missing = [i for i, k in enumerate(keys) if k not in self._memo]
        if missing:
            out = self.runner.run(images[missing])
            fields = (out.logits, out.recon_error, out.shadow_logits, out.input_stats)
            for j, i in enumerate(missing):
                self._memo[keys[i]] = tuple(f[j] for f in fields)
            self.computed += len(missing)
        rows = [self._memo[k] for k in keys]
        return GraphOutputs(*(np.stack([r[f] for r in rows]) for f in range(4)))


@dataclass(frozen=True)
class Defense:
    """One configuration: ``kind`` in none / same / all / am; ``policy`` for same and all."""

    name: str
    kind: str
    settings: DefenseSettings  # SAME's threshold, alpha and policy parameters
    policy: str = "monitor"
    tau: float = 0.0  # am: max-softmax below tau gets misinformation
    nu: float = 100.0  # am: steepness of the gate
    client_threshold: float = 0.0  # client: windowed mean score that flags a client

    def respond(self, out: GraphOutputs, client: ClientState | None = None) -> Decision:
        """The answer (and the operator's SAME score and flag) for graph outputs.
        ``client`` carries the per-client state of the stateful variant."""
        if self.kind == "same":
            return defend(
                out.logits, out.recon_error, out.shadow_logits,
                replace(self.settings, policy=self.policy),
            )  # fmt: skip
        s = self.settings
        scores = same_score(out.recon_error, out.logits, out.shadow_logits, s.alpha)
        flagged = scores > s.threshold
        true_probs = softmax(out.logits)
        if self.kind == "none":
            probs, labels = true_probs, true_probs.argmax(axis=1).astype(np.int64)
        elif self.kind == "all":
            every = np.full(len(true_probs), np.inf)
            probs, labels = apply_policy(
                self.policy, true_probs, every, 0.0, s.params, logits=out.logits
            )
        elif self.kind == "am":
            h = max_softmax_gate(true_probs, self.tau, self.nu)
            mixed = mix_misinformation(true_probs, h, misinformation_target(out.logits))
            probs, labels = mixed.astype(np.float32), mixed.argmax(axis=1).astype(np.int64)
        elif self.kind in ("consistent", "client"):
            h = misinformation_gate(scores, s.threshold, s.params.nu, s.params.margin)
            if self.kind == "consistent":
                target = shifted_misinformation_target(true_probs)
            else:
                target = misinformation_target(out.logits)
                client = client if client is not None else ClientState()
                h = np.maximum(h, client.update(scores, self.client_threshold))
            mixed = (1.0 - h[:, None]) * true_probs + h[:, None] * target
            probs, labels = mixed.astype(np.float32), mixed.argmax(axis=1).astype(np.int64)
        else:
            raise ValueError(f"unknown defense kind {self.kind!r}")
        return Decision(probs, labels, scores, flagged, true_probs)


class ClientState:
    """Scores of one client's recent queries and whether it has been flagged (sticky)."""

    def __init__(self, window: int = CLIENT_WINDOW) -> None:
        self.window = window
        self.recent: list[float] = []
        self.flagged_at: int | None = None
        self.seen = 0

    def update(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        """Per query: 1.0 once the client is flagged (from the query that tips it), else 0."""
        out = np.zeros(len(scores))
        for i, score in enumerate(np.asarray(scores, dtype=np.float64)):
            self.seen += 1
            self.recent = (self.recent + [float(score)])[-self.window :]
            full = len(self.recent) == self.window
            if self.flagged_at is None and full and np.mean(self.recent) > threshold:
                self.flagged_at = self.seen
            out[i] = 1.0 if self.flagged_at is not None else 0.0
        return out


def window_means(scores: np.ndarray, window: int = CLIENT_WINDOW) -> np.ndarray:
    """Mean of every run of ``window`` consecutive scores."""
    c = np.cumsum(np.concatenate([[0.0], np.asarray(scores, dtype=np.float64)]))
    return (c[window:] - c[:-window]) / window


def calibrate_max_softmax_tau(calibration_logits: np.ndarray, target_fpr: float) -> float:
    """``tau`` such that ``target_fpr`` of benign calibration queries fall below it."""
    top = softmax(calibration_logits).max(axis=1).astype(np.float64)
    return float(np.quantile(top, target_fpr))


def build_defenses(
    settings: DefenseSettings,
    calibration_logits: np.ndarray,
    target_fpr: float,
    calibration_scores: np.ndarray | None = None,
) -> dict[str, Defense]:
    """Every configuration, the experimental ones included (``calibration_scores``, the SAME
    scores of the benign calibration stream, set the client-level threshold)."""
    settings = replace(settings, params=settings.params or PolicyParams())
    tau = calibrate_max_softmax_tau(calibration_logits, target_fpr)
    defenses = {"none": Defense("none", "none", settings)}
    for policy in SAME_POLICIES:
        defenses[f"same-{policy}"] = Defense(f"same-{policy}", "same", settings, policy)
    defenses["rs-all"] = Defense("rs-all", "all", settings, "reverse_sigmoid")
    defenses["top1-all"] = Defense("top1-all", "all", settings, "top1")
    defenses["am-maxsoftmax"] = Defense("am-maxsoftmax", "am", settings, tau=tau)
    defenses["same-misinfo-consistent"] = Defense("same-misinfo-consistent", "consistent", settings)
    if calibration_scores is not None and len(calibration_scores) >= CLIENT_WINDOW:
        client_threshold = float(window_means(calibration_scores).max())
        defenses["same-client-misinfo"] = Defense(
            "same-client-misinfo", "client", settings, client_threshold=client_threshold
        )
    return defenses


class DefendedPipeline:
    """``infer(images) -> Decision`` for one defense: what :class:`InProcessOracle` calls."""

    def __init__(self, graphs: CachedGraphs, defense: Defense) -> None:
        self.graphs = graphs
        self.defense = defense
        self.client = ClientState()  # one pipeline = one client

    def infer(self, images: np.ndarray) -> Decision:
        out = self.graphs.run(images)
        problems = find_input_problems(out.input_stats)
        if problems:  # refuse what the served ensemble refuses
            raise InvalidInput(describe_problems(problems))
        return self.defense.respond(out, self.client)
