"""Read the defense step's Prometheus counters from Triton's metrics endpoint."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from ..core.layout import FLAGGED_METRIC as FLAGGED
from ..core.layout import INVALID_METRIC as INVALID
from ..core.layout import SCORED_METRIC as SCORED


@dataclass(frozen=True)
class DefenseCounters:
    scored: float
    flagged: float
    invalid: float

    def __sub__(self, other: DefenseCounters) -> DefenseCounters:
        return DefenseCounters(
            self.scored - other.scored, self.flagged - other.flagged, self.invalid - other.invalid
        )

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.scored if self.scored else float("nan")


def parse_metric_sums(text: str) -> dict[str, float]:
    """Sum every sample of each metric name over its label sets (Prometheus text format)."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return sums


def read_defense_counters(metrics_url: str, timeout_s: float = 10.0) -> DefenseCounters:
    """The query counters; the defense step sends them with every answer, so they are exact."""
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        sums = parse_metric_sums(response.read().decode())
    return DefenseCounters(sums.get(SCORED, 0.0), sums.get(FLAGGED, 0.0), sums.get(INVALID, 0.0))
