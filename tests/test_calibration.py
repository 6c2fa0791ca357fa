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
