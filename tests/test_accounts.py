"""The account layer without a server: the sequential test, keys, stores, the gateway's rewrite."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from same_defense.accounts import (
    AccountService,
    AccountStateUnavailable,
    KeyStore,
    KeyStoreError,
    MemoryStore,
    RedisStore,
    sample_hashes,
)
from same_defense.accounts.local_redis import LocalRedis
from same_defense.core import ManifestError, PolicyParams, apply_policy, settings_from_manifest
from same_defense.core.accounts import (
    AccountSettings,
    AccountState,
    score_pvalues,
    update_state,
)
from same_defense.core.layout import ACCOUNT_OUTPUT, ACCOUNT_PARAMETER
from same_defense.core.lineage import sketches
from same_defense.export.calibration import account_settings_for
from same_defense.gateway.accounting import (
    Authenticator,
    InternalOutputRequested,
    LaneFull,
    SuspectLane,
    Throttle,
    Unauthenticated,
    finish_infer,
    prepare_infer,
)

# One level and one alternative: the bank reduces to a single CUSUM (queries of unknown class
# are bounded at twice the level, 0.4), which keeps the arithmetic of these tests simple.
SETTINGS = AccountSettings(levels=(0.2,), lifts=(0.5,), h=np.log(1000 / 1e-3))


def test_pvalues_rank_each_score_within_its_predicted_class():
    reference = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0, 40.0])]
    p = score_pvalues(np.array([2.5, 2.5, 50.0, 0.0]), np.array([0, 1, 1, 1]), reference)
    np.testing.assert_allclose(p, [2 / 4, 5 / 5, 1 / 5, 5 / 5])


def _run(pvalues, settings=SETTINGS, is_new=None):
    is_new = np.ones(len(pvalues), bool) if is_new is None else is_new
    return update_state(AccountState(), np.asarray(pvalues), is_new, settings, now=100.0)


def test_cusum_suspects_a_stream_of_exceedances_and_not_an_honest_one():
    rng = np.random.default_rng(0)
    thief = _run(np.full(200, 0.05))
    assert thief.is_suspected(100.0, SETTINGS)
    # h / log(q / u) queries in a row are needed (u = 0.4, q = 0.7): no earlier alarm
    step_up = SETTINGS.steps(np.array([0.05]), np.array([-1]))[0, 0]
    assert step_up == pytest.approx(np.log(0.7 / 0.4))
    assert thief.suspected_at_query == int(np.ceil(SETTINGS.h / step_up))
    honest = _run(rng.uniform(size=5000))
    assert not honest.is_suspected(100.0, SETTINGS) and honest.distinct == 5000


def test_repeats_do_not_enter_the_test():
    state = _run(np.full(300, 0.01), is_new=np.eye(1, 300, 0, dtype=bool)[0])
    assert state.queries == 300 and state.distinct == 1 and not state.suspected_since


def test_suspicion_expires_and_the_bound_is_stated():
    settings = AccountSettings(h=5.0, suspicion_ttl_s=60)
    state = update_state(AccountState(), np.zeros(20), np.ones(20, bool), settings, now=0.0)
    assert state.is_suspected(59.0, settings) and not state.is_suspected(61.0, settings)
    assert SETTINGS.false_alarm_bound(1000) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        AccountSettings(levels=(0.5, 0.2))  # levels must increase


def test_honest_rate_bound_grows_when_the_reference_is_small():
    small = account_settings_for([list(range(40))] * 10)
    large = account_settings_for([list(range(4000))] * 10)
    middle = small.levels.index(0.2)
    assert 0.2 < large.bounds[0][middle] < small.bounds[0][middle] < 0.8
    # a class too small for a level gains nothing there, but the build goes on
    tiny = account_settings_for([list(range(5))] * 10)
    assert tiny.bounds[0][0] == 0.999
    # h pays for the union over the bank: K statistics, the same bound per account
    assert large.false_alarm_bound(1000) == pytest.approx(1e-3, rel=1e-3)


def test_forced_misinformation_changes_every_label_and_is_a_distribution():
    logits = np.array([[12.0, 0.0, -3.0, 1.0], [0.5, 0.4, 0.0, -9.0]])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out, labels = apply_policy("misinformation", probs, np.zeros(2), 1.0, logits=logits, force=True)
    assert (labels != probs.argmax(1)).all()
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)
    assert labels[0] == 2  # the least likely class, resolved from float64 logits
    shifted, labels = apply_policy(
        "misinformation", probs, np.zeros(2), 1.0, PolicyParams(target="shifted"), force=True
    )
    np.testing.assert_array_equal(labels, (probs.argmax(1) + 1) % 4)


def test_an_alpha_override_cannot_reuse_another_alphas_calibration():
    manifest = {"threshold": 0.1, "alpha": 0.99}
    assert settings_from_manifest(manifest, "monitor", {"alpha": "0.99"}).alpha == 0.99
    with pytest.raises(ManifestError, match="recalibrate"):
        settings_from_manifest(manifest, "monitor", {"alpha": "0.5"})
    with pytest.raises(ManifestError, match="nu"):
        settings_from_manifest(manifest, "monitor", {"nu": "-1"})


def test_keys_are_stored_hashed_and_revocation_is_immediate(tmp_path):
    keys = KeyStore(tmp_path / "keys.json")
    key = keys.add("alice")
    assert key not in (tmp_path / "keys.json").read_text()
    assert keys.authenticate(key) == "alice" and keys.authenticate(key + "x") is None
    KeyStore(tmp_path / "keys.json").revoke("alice")  # another process edits the file
    assert keys.authenticate(key) is None
    with pytest.raises(KeyStoreError):
        keys.add("no spaces")


def test_authenticator_reads_the_bearer_header_or_the_peer(tmp_path):
    keys = KeyStore(tmp_path / "keys.json")
    key = keys.add("bob")
    auth = Authenticator(keys=keys)
    assert auth.account((("authorization", f"Bearer {key}"),), "ipv4:1.2.3.4:5") == "bob"
    for metadata in ((), (("authorization", "Bearer nope"),)):
        with pytest.raises(Unauthenticated):
            auth.account(metadata, "ipv4:1.2.3.4:5")
    anonymous = Authenticator(anonymous=True)
    assert anonymous.account((), "ipv4:10.0.0.7:4411") == anonymous.account((), "ipv4:10.0.0.7:1")


def _request(outputs=(), parameter=None) -> bytes:
    message = service_pb2.ModelInferRequest(model_name="same")
    message.inputs.add(name="IMAGE", datatype="FP32", shape=[2, 1, 2, 2])
    x = np.arange(8, dtype=np.float32) / 7  # pixels in [0, 1]
    message.raw_input_contents.append(x.tobytes())
    for name in outputs:
        message.outputs.add(name=name)
    if parameter:
        message.parameters[ACCOUNT_PARAMETER].string_param = parameter
    return message.SerializeToString()


def test_the_gateway_asks_for_the_internal_output_and_strips_it():
    prepared = prepare_infer(_request(outputs=("PROBS",), parameter="suspected"), False)
    sent = service_pb2.ModelInferRequest.FromString(prepared.request)
    assert [o.name for o in sent.outputs] == ["PROBS", ACCOUNT_OUTPUT]
    assert ACCOUNT_PARAMETER not in sent.parameters  # a client cannot set its own state
    assert prepared.samples == 2 and prepared.hashes == sample_hashes(
        (np.arange(8, dtype=np.float32) / 7).reshape(2, 4)
    )
    # the lineage sketch of each sample, from the raw bytes, as the core computes it
    np.testing.assert_array_equal(
        prepared.sketches, sketches(np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2) / 7)
    )
    forced = service_pb2.ModelInferRequest.FromString(prepare_infer(_request(), True).request)
    assert forced.parameters[ACCOUNT_PARAMETER].string_param == "suspected"
    with pytest.raises(InternalOutputRequested):
        prepare_infer(_request(outputs=(ACCOUNT_OUTPUT,)), False)
    response = service_pb2.ModelInferResponse(model_name="same")
    for name in ("PROBS", ACCOUNT_OUTPUT):
        response.outputs.add(name=name, datatype="FP32", shape=[2, 1])
    response.raw_output_contents.extend(
        [np.ones(2, np.float32).tobytes(), np.array([0.1, 0.9], np.float32).tobytes()]
    )
    stripped, pvalues = finish_infer(response.SerializeToString())
    message = service_pb2.ModelInferResponse.FromString(stripped)
    assert [o.name for o in message.outputs] == ["PROBS"] and len(message.raw_output_contents) == 1
    np.testing.assert_allclose(pvalues, [0.1, 0.9], rtol=1e-6)


def _exercise(store) -> None:
    service = AccountService(SETTINGS, store)
    x = np.random.default_rng(1).random((40, 1, 2, 2)).astype(np.float32)
    service.record("eve", np.full(20, 0.01), sample_hashes(x[:20]))
    state = service.record("eve", np.full(40, 0.01), sample_hashes(x))  # 20 repeats
    assert (state.queries, state.distinct) == (60, 40)
    assert service.is_suspected("eve") and not service.is_suspected("amy")
    assert [a for a, _ in service.suspected()] == ["eve"]
    service.clear("eve")
    assert not service.is_suspected("eve")


def test_memory_store():
    _exercise(MemoryStore())


@pytest.mark.redis
def test_redis_store_and_both_failure_modes(tmp_path):
    with LocalRedis(tmp_path) as redis_server:
        _exercise(RedisStore(redis_server.url))
        closed = AccountService(SETTINGS, RedisStore(redis_server.url, timeout_s=0.3))
        opened = AccountService(SETTINGS, RedisStore(redis_server.url, timeout_s=0.3), "open")
        redis_server.stop()
        with pytest.raises(AccountStateUnavailable, match="failing closed"):
            closed.is_suspected("eve")
        assert opened.is_suspected("eve") is False
        assert opened.record("eve", np.zeros(1), ["h"]) is None and opened.store_errors == 2


def test_suspect_lane_lets_one_through_at_a_time_and_bounds_the_waiting():
    import threading

    lane = SuspectLane(in_flight=1, waiting=1)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lane.slot():
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    with pytest.raises(TimeoutError):  # the caller's deadline passes while it waits its turn
        with lane.slot(timeout_s=0.05):
            pass
    waiter_done = threading.Event()

    def wait_turn() -> None:
        with lane.slot(timeout_s=10):
            waiter_done.set()

    waiter = threading.Thread(target=wait_turn)
    waiter.start()
    # one in flight and one waiting: a third is refused at once rather than queued
    for _ in range(200):
        with lane._lock:
            if lane._occupancy == 2:
                break
        threading.Event().wait(0.01)
    with pytest.raises(LaneFull):
        with lane.slot(timeout_s=10):
            pass
    release.set()
    holder.join(10)
    waiter.join(10)
    assert waiter_done.is_set()
    with lane.slot(timeout_s=0.05):  # empty again
        pass
    with pytest.raises(ValueError):
        SuspectLane(in_flight=0)


def test_throttle_allows_the_rate_and_refills():
    now = [0.0]
    throttle = Throttle(rate=2.0, burst=2.0, clock=lambda: now[0])
    assert [throttle.allow("eve") for _ in range(3)] == [True, True, False]
    assert throttle.allow("amy")  # per account
    now[0] = 0.5  # one token back at 2 requests/s
    assert throttle.allow("eve") and not throttle.allow("eve")
