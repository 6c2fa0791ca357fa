"""The answers of the defense code to one fixed set of requests, for every policy and tier.

``tests/data/fixed_answers.json`` holds them as the code answered before the refactor of
issue 19 (written by ``python -m tests.fixed_answers --write`` at 17964e0); the test holds
today's code against it. Labels, flags and the account evidence must be equal; probabilities
agree to 1e-6 (numpy's exp differs in the last bits between CPUs with and without AVX-512).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from same_defense.core import (
    POLICY_NAMES,
    TIERS,
    DefenseSettings,
    GraphArrays,
    InvalidInput,
    defend_requests,
)

ANSWERS = Path(__file__).parent / "data" / "fixed_answers.json"
CLASSES = 4


def fixed_requests() -> list[GraphArrays]:
    """Three requests of 6 images (graph outputs drawn from a fixed seed); the last carries a
    non-finite pixel, which the defense must refuse."""
    rng = np.random.default_rng(19)
    requests = []
    for i in range(3):
        logits = (rng.standard_normal((6, CLASSES)) * 3).astype(np.float32)
        error = rng.gamma(2.0, 0.05, (6, 1)).astype(np.float32)
        shadow = (logits + rng.standard_normal((6, CLASSES))).astype(np.float32)
        stats = np.tile(np.float32([0, 0, 1]), (6, 1))
        if i == 2:
            stats[3, 0] = 1  # one NaN pixel
        requests.append(GraphArrays(logits, error, shadow, stats))
    return requests


def fixed_settings(policy: str) -> DefenseSettings:
    rng = np.random.default_rng(7)
    reference = tuple(np.sort(rng.gamma(2.0, 0.05, 40)) for _ in range(CLASSES))
    return DefenseSettings(threshold=0.1, policy=policy, reference=reference)


def answers() -> dict[str, dict]:
    """``{"policy/tier": answer}`` for every policy and tier."""
    out = {}
    # Every policy and tier the core knows: a new one changes the keys and fails the test
    # until its answers are recorded (--write) on purpose.
    for policy in POLICY_NAMES:
        settings = fixed_settings(policy)
        for tier in TIERS:
            results = defend_requests(fixed_requests(), settings, [tier] * 3)
            out[f"{policy}/{tier or 'normal'}"] = [
                {"invalid": str(r)}
                if isinstance(r, InvalidInput)
                else {
                    "probs": np.round(r.probs.astype(np.float64), 7).tolist(),
                    "labels": r.labels.tolist(),
                    "flagged": r.flagged.tolist(),
                    "evidence": np.round(r.evidence().astype(np.float64), 7).tolist(),
                }
                for r in results
            ]
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.fixed_answers --write")
    ANSWERS.write_text(json.dumps(answers(), indent=1) + "\n")
