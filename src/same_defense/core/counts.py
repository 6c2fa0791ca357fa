"""What the defense step counts for Prometheus: one execute's answers, or several.

Every metric update from a Triton Python step is a round trip to the server process (about
0.5 ms of wall time on a loaded 2-core machine, and the stub holds the GIL while it waits).
The step used to observe the score histogram once per image, which cost more than scoring.
It now counts each execute in a :class:`DefenseCounts` (a few numpy additions), sends the
query counters that changed at once (readers see them as soon as the answers are out), and
adds the scores up until :data:`METRICS_FLUSH_S` has passed since the last histogram flush:
then at most 12 round trips, from within that execute.

The score distribution is exported as a Prometheus histogram written by hand: one counter per
cumulative bucket (``same_score_bucket{le=...}``) plus ``same_score_sum`` and
``same_score_count``, so ``histogram_quantile()`` works on it as on any histogram.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# How long scores may wait for the histogram; the last ones of a burst wait for the next
# request (or the model's unloading): the histogram is for dashboards, not exact reads.
METRICS_FLUSH_S = 0.5
# Score histogram buckets as multiples of the calibrated threshold (1.0 = the flag line).
BUCKETS_X_THRESHOLD = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 64.0)


@dataclass
class DefenseCounts:
    """Totals since the last flush: queries scored, flagged, forced, requests refused, scores.

    Args:
        bucket_bounds: Upper bounds of the score histogram's buckets (ascending); a last
            ``+Inf`` bucket is implied.
    """

    bucket_bounds: np.ndarray
    scored: int = 0
    flagged: int = 0
    forced: int = 0
    invalid: int = 0
    score_sum: float = 0.0
    # Scores per bucket, not cumulative: len(bucket_bounds) + 1 (the last one is +Inf).
    per_bucket: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.bucket_bounds = np.asarray(self.bucket_bounds, dtype=np.float64)
        if self.per_bucket is None:
            self.per_bucket = np.zeros(len(self.bucket_bounds) + 1, dtype=np.int64)

    def add_invalid(self, requests: int) -> None:
        """Count ``requests`` refused for invalid input."""
        self.invalid += requests

    def add_scores(self, scores: np.ndarray, flagged: np.ndarray, forced: bool) -> None:
        """Count one answered batch: its scores, how many were flagged, whether forced."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        self.scored += len(scores)
        self.flagged += int(np.count_nonzero(flagged))
        if forced:
            self.forced += len(scores)
        self.score_sum += float(scores.sum())
        # Bucket i holds bounds[i-1] < s <= bounds[i], as Prometheus' "le" buckets do.
        where = np.searchsorted(self.bucket_bounds, scores, side="left")
        self.per_bucket += np.bincount(where, minlength=len(self.per_bucket))

    def merge(self, other: DefenseCounts) -> None:
        """Add ``other``'s counts (same buckets) to these."""
        self.scored += other.scored
        self.flagged += other.flagged
        self.forced += other.forced
        self.invalid += other.invalid
        self.score_sum += other.score_sum
        self.per_bucket += other.per_bucket

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """``(le, count)`` per bucket, cumulative as Prometheus expects, ``+Inf`` last."""
        labels = [f"{b:.6g}" for b in self.bucket_bounds] + ["+Inf"]
        return list(zip(labels, np.cumsum(self.per_bucket).tolist(), strict=True))

    def is_empty(self) -> bool:
        """Nothing to send: no query scored, no request refused."""
        return self.scored == 0 and self.invalid == 0

    def take(self) -> DefenseCounts:
        """Return the totals so far and start again from zero."""
        taken = DefenseCounts(
            self.bucket_bounds,
            self.scored,
            self.flagged,
            self.forced,
            self.invalid,
            self.score_sum,
            self.per_bucket.copy(),
        )
        self.scored = self.flagged = self.forced = self.invalid = 0
        self.score_sum = 0.0
        self.per_bucket[:] = 0
        return taken


def score_buckets(threshold: float) -> np.ndarray:
    """The histogram's bucket bounds for a calibrated ``threshold``."""
    return np.asarray(BUCKETS_X_THRESHOLD, dtype=np.float64) * threshold
