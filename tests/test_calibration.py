import numpy as np
import pytest

from same_defense.export.calibration import false_positive_rate, threshold_at_fpr


def test_threshold_keeps_at_most_the_target_share_above_it():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    threshold = threshold_at_fpr(scores, 0.05)
    assert threshold == 95.0
    assert false_positive_rate(scores, threshold) == pytest.approx(0.05)


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError):
        threshold_at_fpr(np.array([1.0, np.nan]), 0.01)
    with pytest.raises(ValueError):
        threshold_at_fpr(np.array([1.0]), 0.0)


def test_small_classes_get_loose_bounds_and_empty_ones_are_left_out():
    from same_defense.export.calibration import account_settings_for, testable_references

    rng = np.random.default_rng(0)
    reference = [sorted(rng.random(n).tolist()) for n in (40, 4, 0, 25)]
    usable, left_out = testable_references(reference)
    assert left_out == [2]  # no score at all: its queries get p = 1 and never exceed
    settings = account_settings_for(usable)
    middle = settings.levels.index(0.2)
    # the fewer scores, the looser the bound of the honest rate; never tighter than 0.2
    assert (
        0.2 < settings.bounds[0][middle] < settings.bounds[3][middle] < settings.bounds[1][middle]
    )
    assert settings.bounds[2] == (0.999,) * len(settings.levels)
