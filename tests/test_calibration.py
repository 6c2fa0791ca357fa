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


def test_classes_with_too_few_scores_are_left_out_of_the_account_test():
    from same_defense.export.calibration import account_settings_for, testable_references

    rng = np.random.default_rng(0)
    reference = [sorted(rng.random(n).tolist()) for n in (40, 4, 0, 25)]
    usable, left_out = testable_references(reference)
    assert left_out == [1]  # 4 scores cannot bound the honest rate below p1 = 0.8
    assert usable[1] == [] and usable[0] == reference[0] and usable[3] == reference[3]
    with pytest.raises(ValueError, match="too few calibration scores"):
        account_settings_for(reference)
    assert account_settings_for(usable).p0 < 0.8
