"""Evaluation: metrics on small cases with known answers, the baselines, the defenses, and a
tiny end-to-end run of the matrix that writes the report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from same_harness.evaluation import (
    CachedGraphs,
    DefendedPipeline,
    Prada,
    answer_accuracy,
    build_defenses,
    clone_metrics,
    detection_metrics,
    energy_score,
    first_flag,
    fpr_at_tpr,
    max_softmax_score,
    running_mean,
)
from same_harness.evaluation.defenses import ClientState, calibrate_max_softmax_tau

from same_defense.core import DefenseSettings, GraphArrays, apply_policy, defend, softmax
from same_defense.runtime.inprocess import InProcessSame

# ----------------------------------------------------------------------------------- metrics


def test_detection_metrics_on_a_hand_computed_case():
    benign = np.array([0.1, 0.4])
    attack = np.array([0.35, 0.8])
    m = detection_metrics(benign, attack, threshold=0.5)
    assert m["auroc"] == pytest.approx(0.75)  # 3 of the 4 (attack, benign) pairs ordered
    # ranking A(0.8) B A(0.35) B: precision 1 at recall 1/2, 2/3 at recall 1
    assert m["aupr"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["fpr_at_95_tpr"] == pytest.approx(0.5)  # catching 0.35 also flags 0.4
    assert m["tpr_at_threshold"] == pytest.approx(0.5)
    assert m["fpr_at_threshold"] == pytest.approx(0.0)
    assert (m["n_benign"], m["n_attack"]) == (2, 2)


def test_detection_metrics_extremes():
    rng = np.random.default_rng(0)
    benign, attack = rng.random(50), rng.random(60) + 2.0
    perfect = detection_metrics(benign, attack)
    assert perfect["auroc"] == 1.0 and perfect["aupr"] == 1.0 and perfect["fpr_at_95_tpr"] == 0
    inverted = detection_metrics(attack, benign)
    assert inverted["auroc"] == 0.0 and inverted["fpr_at_95_tpr"] == 1.0
    with pytest.raises(ValueError):
        detection_metrics(np.array([]), attack)


def test_fpr_at_tpr_counts_benign_above_the_needed_threshold():
    benign = np.arange(100) / 100.0  # 0.00 .. 0.99
    attack = np.array([0.995] * 95 + [0.5] * 5)
    assert fpr_at_tpr(benign, attack, 0.95) == pytest.approx(0.0)
    assert fpr_at_tpr(benign, attack, 1.0) == pytest.approx(0.50)  # 0.50..0.99 >= 0.5


def test_clone_metrics_and_answer_accuracy():
    truth = np.array([0, 1, 2, 3])
    victim = np.array([0, 1, 2, 0])
    clone = np.array([0, 1, 0, 0])
    m = clone_metrics(clone, victim, truth)
    assert m["clone_accuracy"] == pytest.approx(0.5)
    assert m["clone_fidelity"] == pytest.approx(0.75)
    assert answer_accuracy(np.array([0, -1, 2, 3]), truth) == pytest.approx(0.75)


# --------------------------------------------------------------------------------- baselines


def test_max_softmax_and_energy_scores():
    logits = np.array([[10.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(max_softmax_score(logits), [-softmax(logits)[0].max(), -0.5])
    np.testing.assert_allclose(energy_score(np.array([[0.0, 0.0]])), [-np.log(2)])
    # confident rows score lower (less suspicious) under both
    assert max_softmax_score(logits)[0] < max_softmax_score(logits)[1]
    assert energy_score(logits)[0] < energy_score(logits)[1]


def test_prada_flags_a_synthetic_walk_not_an_iid_stream():
    rng = np.random.default_rng(0)
    labels = np.zeros(300, np.int64)
    iid = rng.normal(size=(300, 16)).astype(np.float32)
    # synthetic: each query a step from the previous one, of log-normal length
    u = rng.normal(size=(300, 16))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    walk = np.cumsum(u * np.exp(1.5 * rng.normal(size=(300, 1))), axis=0)
    w_iid = Prada().observe(iid, labels)
    w_walk = Prada().observe(walk, labels)
    assert (w_iid[:100] == 1.0).all()  # no test before 100 distances
    assert w_iid[-1] > 0.9  # near-normal distances
    assert w_walk[-1] < 0.8
    assert first_flag(w_walk, 0.9) is not None and first_flag(w_walk, 0.9) > 100
    assert first_flag(w_iid, w_iid.min() - 1e-9) is None


def test_running_mean_over_the_last_queries():
    np.testing.assert_allclose(running_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1, 2, 4, 6])
    np.testing.assert_allclose(running_mean(np.arange(5.0), 10), [0, 0.5, 1, 1.5, 2])


def test_prada_keeps_state_per_client():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8))
    one = Prada()
    split = np.concatenate([one.observe(x[:60], np.zeros(60)), one.observe(x[60:], np.zeros(60))])
    np.testing.assert_allclose(split, Prada().observe(x, np.zeros(120)))


# ---------------------------------------------------------------------------------- defenses


def _outputs(n: int = 40, classes: int = 3, seed: int = 0) -> GraphArrays:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, classes))
    error = rng.random((n, 1)) * 2.0  # alpha 1: score = error, threshold 1 -> about half flagged
    return GraphArrays(logits, error, logits, np.tile([[0, 0.0, 1.0]], (n, 1)))


SETTINGS = DefenseSettings(threshold=1.0, alpha=1.0, policy="monitor")


def test_each_defense_answers_as_its_definition_says():
    out = _outputs()
    probs = softmax(out.logits)
    defenses = build_defenses(SETTINGS, out.logits, target_fpr=0.1)
    flagged = out.recon_error[:, 0] > 1.0
    none = defenses["none"].respond(out)
    np.testing.assert_allclose(none.probs, probs)
    np.testing.assert_array_equal(none.flagged, flagged)
    for policy in ("reject", "top1", "reverse_sigmoid", "misinformation"):
        same = defenses[f"same-{policy}"].respond(out)

        ref = defend(
            out.logits, out.recon_error, out.shadow_logits, replace(SETTINGS, policy=policy)
        )
        np.testing.assert_allclose(same.probs, ref.probs)
    rs = defenses["rs-all"].respond(out)
    expected, _ = apply_policy("reverse_sigmoid", probs, np.full(len(probs), 9.0), 1.0)
    np.testing.assert_allclose(rs.probs, expected, rtol=1e-6)  # every row, flagged or not
    top1 = defenses["top1-all"].respond(out)
    np.testing.assert_allclose(top1.probs.max(axis=1), 1.0)
    np.testing.assert_array_equal(top1.labels, probs.argmax(axis=1))
    am = defenses["am-maxsoftmax"].respond(out)
    unsure = probs.max(axis=1) < defenses["am-maxsoftmax"].tau - 0.05
    sure = probs.max(axis=1) > defenses["am-maxsoftmax"].tau + 0.05
    assert (am.labels[unsure] != probs.argmax(axis=1)[unsure]).all()
    np.testing.assert_array_equal(am.labels[sure], probs.argmax(axis=1)[sure])


def test_experimental_variants_consistent_and_client_level_misinformation():
    out = _outputs(n=80)
    probs = softmax(out.logits)
    calm = np.full(200, 0.5)  # benign calibration stream, score 0.5 < threshold 1
    defenses = build_defenses(SETTINGS, out.logits, 0.1, calibration_scores=calm)
    consistent = defenses["same-misinfo-consistent"].respond(out)
    high = out.recon_error[:, 0] > 1.25 * 1.5  # well past the gate's centre
    np.testing.assert_array_equal(
        consistent.labels[high], (probs.argmax(axis=1)[high] + 1) % probs.shape[1]
    )
    client = defenses["same-client-misinfo"]
    assert client.client_threshold == pytest.approx(0.5)
    state = ClientState(window=4)
    h = state.update(np.array([0.1, 0.2, 0.1, 0.9, 0.9, 0.1]), threshold=0.5)
    # window means: 0.325 (4th), 0.525 (5th: flagged), then sticky
    np.testing.assert_array_equal(h, [0, 0, 0, 0, 1, 1])
    assert state.flagged_at == 5


def test_max_softmax_tau_is_calibrated_at_the_target_rate():
    logits = np.random.default_rng(3).normal(scale=2.0, size=(1000, 10))
    tau = calibrate_max_softmax_tau(logits, 0.05)
    assert (softmax(logits).max(axis=1) < tau).mean() == pytest.approx(0.05, abs=0.002)


class _CountingRunner:
    def __init__(self) -> None:
        self.seen = 0

    def run(self, images: np.ndarray) -> GraphArrays:
        self.seen += len(images)
        m = images.reshape(len(images), -1).mean(axis=1, keepdims=True)
        return GraphArrays(np.hstack([m, -m]), m, np.hstack([m, m]), np.zeros((len(m), 3)))


def test_cached_graphs_run_each_image_once_and_keep_order():
    runner = _CountingRunner()
    graphs = CachedGraphs(runner)
    x = np.random.default_rng(0).random((5, 1, 4, 4)).astype(np.float32)
    first = graphs.run(x)
    again = graphs.run(x[::-1])
    assert runner.seen == 5
    np.testing.assert_allclose(again.logits, first.logits[::-1])
    graphs.run(np.concatenate([x, x[:1] + 0.01]))
    assert runner.seen == 6


def test_defended_pipeline_matches_the_served_code(tiny_repository):
    from same_harness.data.queries import make_query_set

    from same_defense.core.manifest import load_verified_manifest, settings_from_manifest

    served = InProcessSame(tiny_repository, policy="misinformation")
    manifest = load_verified_manifest(tiny_repository)
    x = np.concatenate(
        [
            make_query_set("digits8x8", 32, (1, 28, 28), 0),
            make_query_set("noise", 32, (1, 28, 28), 0),
        ]
    )
    graphs = CachedGraphs(served.graphs)
    defenses = build_defenses(
        settings_from_manifest(manifest, "monitor"), graphs.run(x).logits, 0.01
    )
    mine = DefendedPipeline(graphs, defenses["same-misinformation"]).infer(x)
    theirs = served.infer(x)
    np.testing.assert_allclose(mine.probs, theirs.probs, atol=1e-6)
    np.testing.assert_array_equal(mine.labels, theirs.labels)
    np.testing.assert_array_equal(mine.flagged, theirs.flagged)


# ------------------------------------------------------------------------- the whole matrix


def test_tiny_matrix_writes_the_report(tiny_repository, tmp_path):
    from same_harness.evaluation.run import main

    out = tmp_path / "reports"
    main(
        [
            "--repository",
            str(tiny_repository),
            "--out-dir",
            str(out),
            "--budget",
            "200",
            "--epochs",
            "1",
            "--attacks",
            "knockoff-digits8x8",
            "noise",
            "--defenses",
            "same-misinformation",
            "top1-all",
            "--workers",
            "1",
            "--grpc-check",
            "0",
            "--no-indist",
        ]
    )
    report = json.loads((out / "evaluation.json").read_text())
    records = report["records"]
    # 2 attacks x 3 defenses (none added) x 2 output types
    assert len(records) == 12
    assert {r["defense"] for r in records} == {"none", "same-misinformation", "top1-all"}
    for r in records:
        assert r["queries_used"] == 200 and r["budget"] == 200
        assert 0 <= r["clone_accuracy"] <= 1 and 0 <= r["clone_fidelity"] <= 1
        assert set(r["detection"]) == {"auroc", "aupr", "fpr_at_95_tpr", "tpr_at_threshold"}
    by = {(r["attack"], r["defense"], r["output"]): r for r in records}
    # top1-all gives a probability thief exactly what a label thief gets: same clone
    for attack in ("knockoff-digits8x8", "noise"):
        a, b = by[(attack, "top1-all", "probs")], by[(attack, "none", "labels")]
        assert a["clone_accuracy"] == b["clone_accuracy"]
    detectors = {d["detector"] for d in report["detection"]}
    assert detectors == {
        "same-a0.99",
        "same-a1",
        "same-a0",
        "same-a0.997481",  # the authors' a = 0.99 on [-1, 1] pixels
        "same-client32",
        "max-softmax",
        "energy",
        "prada",
    }
    assert report["benign"]["none"]["cost_points"] == 0
    assert any(g["goal"].startswith("AUROC") for g in report["goals"])
    md = (out / "evaluation.md").read_text()
    assert "## Extraction" in md and "knockoff-digits8x8" in md
    for name in ("roc_noise.png", "hist_knockoff-digits8x8.png", "clone_vs_queries.png"):
        assert (out / name).stat().st_size > 1000
    from same_harness.docs import load_reports, results_page

    page = results_page(load_reports(out))  # the docs page renders this report too
    assert "per-query AUROC, knockoff-digits8x8" in page and "### Extraction" in page
