"""Unit tests of the numpy-only defense core: score, policies, input checks."""

import numpy as np
import pytest

from same_defense.core import (
    DefenseSettings,
    PolicyParams,
    apply_policy,
    defend,
    describe_problems,
    find_input_problems,
    kl_divergence,
    same_score,
    softmax,
)
from same_defense.core.policies import (
    max_softmax_gate,
    misinformation_gate,
    misinformation_target,
    mix_misinformation,
    reverse_sigmoid,
    shifted_misinformation_target,
)


def test_softmax_rows_sum_to_one_and_survive_large_logits():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]], atol=1e-6)


def test_kl_matches_hand_computed_value():
    p = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.9, 0.1]]))
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    np.testing.assert_allclose(kl_divergence(p, q), [expected])
    assert kl_divergence(p, p)[0] == pytest.approx(0.0, abs=1e-12)


def test_same_score_mixes_error_and_kl_per_class():
    logits = np.log(np.array([[0.5, 0.5], [0.25, 0.75]]))
    shadow = np.log(np.array([[0.9, 0.1], [0.25, 0.75]]))
    error = np.array([[0.2], [0.4]])
    kl = kl_divergence(logits, shadow)
    np.testing.assert_allclose(same_score(error, logits, shadow, 1.0), [0.2, 0.4])
    np.testing.assert_allclose(same_score(error, logits, shadow, 0.0), kl / 2)
    np.testing.assert_allclose(
        same_score(error, logits, shadow, 0.99), 0.99 * error[:, 0] + 0.01 * kl / 2
    )
    with pytest.raises(ValueError):
        same_score(error, logits, shadow, 1.5)


PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=np.float32)
SCORES = np.array([0.1, 5.0, 0.2])  # only row 1 is above the threshold
THRESHOLD = 1.0


def test_monitor_returns_the_true_answer():
    out, labels = apply_policy("monitor", PROBS, SCORES, THRESHOLD)
    np.testing.assert_allclose(out, PROBS)
    np.testing.assert_array_equal(labels, [0, 1, 2])


def test_reject_answers_uniform_and_no_label_only_for_flagged():
    out, labels = apply_policy("reject", PROBS, SCORES, THRESHOLD)
    np.testing.assert_allclose(out[1], [1 / 3] * 3)
    np.testing.assert_allclose(out[[0, 2]], PROBS[[0, 2]])
    np.testing.assert_array_equal(labels, [0, -1, 2])


def test_top1_gives_one_hot_for_flagged():
    out, labels = apply_policy("top1", PROBS, SCORES, THRESHOLD)
    np.testing.assert_allclose(out[1], [0, 1, 0])
    np.testing.assert_allclose(out[0], PROBS[0])
    np.testing.assert_array_equal(labels, [0, 1, 2])


def test_reverse_sigmoid_follows_art_formula():
    p = np.array([[0.7, 0.2, 0.1]])
    beta, gamma = 1.0, 0.2
    r = beta * (1 / (1 + np.exp(gamma * np.log((1 - p) / p))) - 0.5)
    expected = np.clip(p - r, 0, 1)
    expected /= expected.sum()
    np.testing.assert_allclose(reverse_sigmoid(p, beta, gamma), expected, rtol=1e-6)
    out, _ = apply_policy("reverse_sigmoid", PROBS, SCORES, THRESHOLD, PolicyParams(1.0, 0.2))
    np.testing.assert_allclose(out[1], reverse_sigmoid(PROBS[1:2], 1.0, 0.2)[0], rtol=1e-6)
    np.testing.assert_allclose(out[0], PROBS[0])
    assert not np.allclose(out[1], PROBS[1])


def test_misinformation_flips_high_scores_and_keeps_low_ones():
    out, labels = apply_policy("misinformation", PROBS, SCORES, THRESHOLD)
    assert labels[1] != 1  # far above threshold: the true class is avoided
    assert labels[0] == 0 and labels[2] == 2  # far below: the true answer
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    gate = misinformation_gate(np.array([0.5, 1.0, 2.0]), 1.0, nu=10.0, margin=1.0)
    assert gate[0] < 0.01 and gate[1] == pytest.approx(0.5) and gate[2] > 0.99


def test_max_softmax_gate_opens_below_tau_only():
    # max p: 0.7, 0.8, 0.4; tau 0.6 -> only row 2 (unsure) gets misinformation
    h = max_softmax_gate(PROBS, tau=0.6, nu=100.0)
    assert h[0] < 0.01 and h[1] < 0.01 and h[2] > 0.99
    assert max_softmax_gate(np.array([[0.6, 0.4]]), 0.6, 5.0)[0] == pytest.approx(0.5)


def test_mix_misinformation_interpolates_to_the_misinformation_target():
    h = np.array([0.0, 1.0, 0.5])
    mixed = mix_misinformation(PROBS, h)
    target = misinformation_target(np.log(PROBS))
    np.testing.assert_allclose(mixed[0], PROBS[0], rtol=1e-6)
    np.testing.assert_allclose(mixed[1], target[1])
    np.testing.assert_allclose(mixed[2], 0.5 * PROBS[2] + 0.5 * target[2], rtol=1e-6)
    assert mixed[1].argmax() != PROBS[1].argmax()
    # equals the served policy when its gate is the same
    scores = np.array([0.1, 50.0, 0.2])
    served, _ = apply_policy("misinformation", PROBS, scores, THRESHOLD)
    gate = misinformation_gate(scores, THRESHOLD, PolicyParams().nu, PolicyParams().margin)
    np.testing.assert_allclose(mix_misinformation(PROBS, gate), served, rtol=1e-6)


def test_shifted_misinformation_target_is_a_consistent_wrong_class():
    target = shifted_misinformation_target(PROBS)
    np.testing.assert_array_equal(target.argmax(axis=1), [1, 2, 0])  # predicted + 1 mod 3
    np.testing.assert_allclose(target.sum(axis=1), 1.0)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        apply_policy("bogus", PROBS, SCORES, THRESHOLD)
    with pytest.raises(ValueError, match="unknown policy"):
        DefenseSettings(threshold=1.0, policy="bogus")


def test_defend_flags_above_threshold_only():
    logits = np.log(PROBS)
    decision = defend(
        logits,
        np.array([[0.5], [2.0], [1.0]]),
        logits,
        DefenseSettings(1.0, alpha=1.0, policy="monitor"),
    )
    np.testing.assert_array_equal(decision.flagged, [False, True, False])
    np.testing.assert_allclose(decision.scores, [0.5, 2.0, 1.0])


def test_input_problems_name_the_bad_samples():
    stats = np.array([[0, 0.0, 1.0], [3, 0.0, 1.0], [0, -0.5, 1.0], [0, 0.0, 255.0]])
    problems = find_input_problems(stats)
    assert [p.index for p in problems] == [1, 2, 3]
    message = describe_problems(problems)
    assert "sample 1: 3 NaN/Inf" in message and "1/255" in message
    assert find_input_problems(np.array([[0, 0.0, 1.0]])) == []


def test_defend_requests_checks_each_request_and_answers_the_rest_like_defend():
    from same_defense.core import GraphArrays, InvalidInput, defend_requests

    rng = np.random.default_rng(0)
    settings = DefenseSettings(0.5, alpha=0.99, policy="misinformation")

    def request(n: int, bad: bool = False) -> GraphArrays:
        stats = np.tile([0.0, 0.0, 1.0], (n, 1))
        if bad:
            stats[-1] = [0.0, 0.0, 255.0]  # pixels not scaled to [0, 1]
        return GraphArrays(
            rng.normal(size=(n, 3)), rng.random((n, 1)) * 2, rng.normal(size=(n, 3)), stats
        )

    requests = [request(2), request(3, bad=True), request(4), request(1)]
    forced = [False, False, True, False]
    results = defend_requests(requests, settings, forced)
    assert isinstance(results[1], InvalidInput) and "sample 2" in str(results[1])
    for r, f, got in zip(requests, forced, results, strict=True):
        if isinstance(got, InvalidInput):
            continue
        alone = defend(r.logits, r.recon_error, r.shadow_logits, settings, force=f)
        np.testing.assert_array_equal(got.probs, alone.probs)
        np.testing.assert_array_equal(got.labels, alone.labels)
        np.testing.assert_array_equal(got.pvalues, alone.pvalues)
    assert (results[2].labels != results[2].true_probs.argmax(axis=1)).all()  # forced


def test_fixed_requests_are_answered_as_before():
    """The same requests get the same answers as the recorded ones (tests/fixed_answers.py):
    a refactor must not change what a client receives, for any policy or tier."""
    import json

    from .fixed_answers import ANSWERS, answers

    recorded = json.loads(ANSWERS.read_text())
    today = answers()
    assert today.keys() == recorded.keys()
    for key, requests in recorded.items():
        for was, now in zip(requests, today[key], strict=True):
            assert was.keys() == now.keys(), key
            if "invalid" in was:
                assert now["invalid"] == was["invalid"], key
                continue
            assert now["labels"] == was["labels"] and now["flagged"] == was["flagged"], key
            np.testing.assert_allclose(now["probs"], was["probs"], atol=1e-6, err_msg=key)
            # Columns recorded then must be equal. The one added since (the victim's top-1
            # probability, 2026-12) is what `monitor`, which answers truthfully, serves.
            evidence, recorded_width = np.asarray(now["evidence"]), len(was["evidence"][0])
            np.testing.assert_allclose(
                evidence[:, :recorded_width], was["evidence"], atol=1e-6, err_msg=key
            )
            truthful = today[f"monitor/{key.split('/')[1]}"][requests.index(was)]
            top1 = np.asarray(truthful["probs"]).max(axis=1)
            np.testing.assert_allclose(evidence[:, 3], top1, atol=1e-6, err_msg=key)
