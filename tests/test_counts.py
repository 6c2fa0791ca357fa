"""The defense step's counts between two metric flushes (core/counts.py): pure numpy."""

import numpy as np

from same_defense.core import DefenseCounts, score_buckets


def test_buckets_are_cumulative_with_le_inclusive_and_inf_last():
    counts = DefenseCounts(score_buckets(2.0)[:3])  # bounds 0.5, 1.0, 1.5
    counts.add_scores(np.array([0.1, 0.5, 0.7, 1.0, 1.2, 9.0]), np.zeros(6, bool), False)
    assert counts.cumulative_buckets() == [("0.5", 2), ("1", 4), ("1.5", 5), ("+Inf", 6)]
    assert counts.scored == 6
    assert counts.score_sum == np.float64(0.1 + 0.5 + 0.7 + 1.0 + 1.2 + 9.0)


def test_flagged_forced_and_invalid_add_up_and_take_starts_again():
    counts = DefenseCounts(score_buckets(1.0))
    counts.add_scores(np.array([0.2, 3.0]), np.array([False, True]), forced=False)
    counts.add_scores(np.array([[5.0], [0.1], [0.3]]), np.array([True, False, False]), True)
    counts.add_invalid(2)
    taken = counts.take()
    assert (taken.scored, taken.flagged, taken.forced, taken.invalid) == (5, 2, 3, 2)
    assert taken.cumulative_buckets()[-1] == ("+Inf", 5)
    assert counts.is_empty() and not taken.is_empty()
    assert counts.cumulative_buckets()[-1] == ("+Inf", 0)
    assert counts.score_sum == 0.0


def test_merge_adds_one_execute_to_the_pending_totals():
    pending, one = DefenseCounts(score_buckets(1.0)), DefenseCounts(score_buckets(1.0))
    one.add_scores(np.array([0.1, 2.0]), np.array([False, True]), forced=True)
    pending.merge(one)
    pending.merge(one)
    assert (pending.scored, pending.flagged, pending.forced) == (4, 2, 4)
    assert pending.cumulative_buckets()[-1] == ("+Inf", 4)
    assert pending.score_sum == 4.2
