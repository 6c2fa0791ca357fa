import numpy as np
import pytest

from same_defense.core.manifest import read_manifest
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


def test_recalibration_adds_a_new_sources_images_without_retraining(tiny_repository, tmp_path):
    """After a drift alert: the new camera's images join the calibration; the graphs stay."""
    import shutil

    from same_harness.data.shifts import apply_shift

    from same_defense.data import load_dataset, split_dataset
    from same_defense.export.build import main as build_main
    from same_defense.runtime.inprocess import InProcessSame

    repo = tmp_path / "model_repository"
    shutil.copytree(tiny_repository, repo)
    before = InProcessSame(repo)
    m = before.manifest
    test = split_dataset(load_dataset(m["dataset"]), seed=m["seed"]).test
    # a cheap sensor (what scores high on the tiny repository: its MAE is weak elsewhere)
    camera = apply_shift("sensor-noise@0.5", test.images[:600])
    np.save(tmp_path / "camera.npy", camera[:300])
    graphs = {p.name: p.read_bytes() for p in repo.rglob("model.onnx")}
    assert build_main(
        ["--repository", str(repo), "--recalibrate"]
        + ["--calibration-extra", str(tmp_path / "camera.npy")]
    ) in (0, None)
    after = InProcessSame(repo)
    assert {p.name: p.read_bytes() for p in repo.rglob("model.onnx")} == graphs
    manifest = read_manifest(repo)
    assert manifest["calibration_extra"][0]["images"] == 300
    held_out = camera[300:]  # the new sensor's other images: no longer far in the tail
    old_p = before.infer(held_out).pvalues
    new_p = after.infer(held_out).pvalues
    assert (new_p <= 0.05).mean() < (old_p <= 0.05).mean()
