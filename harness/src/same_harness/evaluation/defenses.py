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

from same_defense.core import (
    POLICY_NAMES,
    Decision,
    DefenseSettings,
    GraphArrays,
    PolicyParams,
    apply_policy,
    check_inputs,
    defend,
    softmax,
)
from same_defense.core.policies import (
    max_softmax_gate,
    misinformation_gate,
    misinformation_target,
    shifted_misinformation_target,
)
from same_defense.core.score import same_score
from same_defense.runtime.inprocess import GraphRunner

DEFENSE_NAMES = (
    "none",
    *(f"same-{p}" for p in POLICY_NAMES),
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

    def run(self, images: np.ndarray) -> GraphArrays:
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
        return GraphArrays(*(np.stack([r[f] for r in rows]) for f in range(4)))


@dataclass(frozen=True)
class Defense:
    """One configuration of the matrix: ``respond`` turns graph outputs into the answer (and
    the operator's SAME score and flag). Subclasses differ only in how they answer."""

    name: str
    settings: DefenseSettings  # SAME's threshold, alpha and policy parameters

    def respond(self, out: GraphArrays, client: ClientState | None = None) -> Decision:
        """``client`` carries per-client state (only the stateful variant reads it)."""
        scores = self.scores(out)
        true_probs = softmax(out.logits)
        probs, labels = self.answer(out, scores, true_probs, client)
        return Decision(probs, labels, scores, scores > self.settings.threshold, true_probs)

    def scores(self, out: GraphArrays) -> np.ndarray:
        s = self.settings
        return same_score(out.recon_error, out.logits, out.shadow_logits, s.alpha)

    def answer(
        self,
        out: GraphArrays,
        scores: np.ndarray,
        true_probs: np.ndarray,
        client: ClientState | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, labels)`` the client receives; the base class: the true answer."""
        return true_probs, true_probs.argmax(axis=1).astype(np.int64)


@dataclass(frozen=True)
class Same(Defense):
    """SAME as served, through :func:`same_defense.core.defend` with ``policy``."""

    policy: str = "monitor"

    def respond(self, out: GraphArrays, client: ClientState | None = None) -> Decision:
        settings = replace(self.settings, policy=self.policy)
        return defend(out.logits, out.recon_error, out.shadow_logits, settings)


@dataclass(frozen=True)
class EveryQuery(Defense):
    """A core policy applied to every query (ART-style postprocessing, no detector)."""

    policy: str = "top1"

    def answer(self, out, scores, true_probs, client):
        every = np.full(len(true_probs), np.inf)
        return apply_policy(
            self.policy, true_probs, every, 0.0, self.settings.params, logits=out.logits
        )


def _mixed(true_probs: np.ndarray, h: np.ndarray, target: np.ndarray):
    mixed = (1.0 - h[:, None]) * true_probs + h[:, None] * target
    return mixed.astype(np.float32), mixed.argmax(axis=1).astype(np.int64)


@dataclass(frozen=True)
class AdaptiveMisinformation(Defense):
    """Adaptive Misinformation as published: max-softmax below ``tau`` is answered wrong."""

    tau: float = 0.0
    nu: float = 100.0  # steepness of the gate

    def answer(self, out, scores, true_probs, client):
        h = max_softmax_gate(true_probs, self.tau, self.nu)
        return _mixed(true_probs, h, misinformation_target(out.logits))


@dataclass(frozen=True)
class ConsistentMisinformation(Defense):
    """SAME's gate; the wrong answer is the one-hot of ``(predicted + 1) mod C``."""

    def answer(self, out, scores, true_probs, client):
        s = self.settings
        h = misinformation_gate(scores, s.threshold, s.params.nu, s.params.margin)
        return _mixed(true_probs, h, shifted_misinformation_target(true_probs))


@dataclass(frozen=True)
class ClientMisinformation(Defense):
    """SAME's gate, and every answer is misinformation once the client's windowed mean score
    exceeds ``client_threshold`` (stateful: one :class:`ClientState` per client)."""

    client_threshold: float = 0.0

    def answer(self, out, scores, true_probs, client):
        s = self.settings
        h = misinformation_gate(scores, s.threshold, s.params.nu, s.params.margin)
        client = client if client is not None else ClientState()
        h = np.maximum(h, client.update(scores, self.client_threshold))
        return _mixed(true_probs, h, misinformation_target(out.logits))


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
    defenses: dict[str, Defense] = {"none": Defense("none", settings)}
    for policy in POLICY_NAMES:
        defenses[f"same-{policy}"] = Same(f"same-{policy}", settings, policy)
    defenses["rs-all"] = EveryQuery("rs-all", settings, "reverse_sigmoid")
    defenses["top1-all"] = EveryQuery("top1-all", settings, "top1")
    defenses["am-maxsoftmax"] = AdaptiveMisinformation("am-maxsoftmax", settings, tau=tau)
    defenses["same-misinfo-consistent"] = ConsistentMisinformation(
        "same-misinfo-consistent", settings
    )
    if calibration_scores is not None and len(calibration_scores) >= CLIENT_WINDOW:
        client_threshold = float(window_means(calibration_scores).max())
        defenses["same-client-misinfo"] = ClientMisinformation(
            "same-client-misinfo", settings, client_threshold=client_threshold
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
        check_inputs(out.input_stats)  # refuse what the served ensemble refuses
        return self.defense.respond(out, self.client)
