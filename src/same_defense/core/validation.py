"""Per-sample input checks, computed from the statistics the reconstructor graph reduces.

The ONNX reconstructor returns ``INPUT_STATS = [non-finite count, min, max]`` per sample (the
min/max over the finite pixels), so the check needs no copy of the image in the Python step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Pixels are float32 in [0, 1]; allow float rounding from the user's own normalisation.
RANGE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class InputProblem:
    """A sample that fails the input checks: its index in the batch, and why, for the user."""

    index: int
    reason: str


def find_input_problems(
    input_stats: np.ndarray, low: float = 0.0, high: float = 1.0
) -> list[InputProblem]:
    """Return one problem per bad sample (empty when all samples are valid)."""
    stats = np.asarray(input_stats, dtype=np.float64).reshape(-1, 3)
    problems: list[InputProblem] = []
    for i, (nonfinite, lo, hi) in enumerate(stats):
        if nonfinite > 0:
            problems.append(InputProblem(i, f"{int(nonfinite)} NaN/Inf pixel value(s)"))
        elif lo < low - RANGE_TOLERANCE or hi > high + RANGE_TOLERANCE:
            hint = " (scale pixels by 1/255?)" if hi > 1.5 else ""
            problems.append(
                InputProblem(
                    i, f"pixel values in [{lo:.4g}, {hi:.4g}], outside [{low}, {high}]{hint}"
                )
            )
    return problems


def describe_problems(problems: list[InputProblem], limit: int = 5) -> str:
    """One human-readable line naming the offending samples."""
    shown = "; ".join(f"sample {p.index}: {p.reason}" for p in problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return (
        f"invalid IMAGE: {len(problems)} bad sample(s): {shown}{more}. "
        "Expected float32 pixels in [0, 1], NCHW."
    )
