"""The account test's bank of CUSUMs, its tiers, linked accounts and the drift monitor
(in-process, no server)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from same_defense.accounts import AccountService, MemoryStore, sample_hashes
from same_defense.accounts.lineage_pool import RedisLineagePool
from same_defense.accounts.links import account_links, client_address, network_of
from same_defense.accounts.local_redis import LocalRedis
from same_defense.accounts.population import PopulationMonitor, RedisAlarmLog
from same_defense.accounts.store import RedisStore
from same_defense.core import REVIEW, SUSPECTED, account_evidence, score_pvalues
from same_defense.core.accounts import AccountSettings, AccountState, update_state
from same_defense.core.lineage import SKETCH_SIZE, near_repeats, sketches
from same_defense.export.calibration import account_settings_for

CLASSES = 10
PER_CLASS = 125  # the default build's calibration scores per class


def _calibrated(seed: int = 0) -> tuple[list[np.ndarray], AccountSettings]:
    rng = np.random.default_rng(seed)
    reference = [np.sort(rng.random(PER_CLASS)) for _ in range(CLASSES)]
    return reference, account_settings_for([r.tolist() for r in reference])


def _evidence(
    scores: np.ndarray, classes: np.ndarray, reference, flags=None, confidence=None
) -> np.ndarray:
    flags = np.zeros(len(scores)) if flags is None else flags
    confidence = np.full(len(scores), 0.5) if confidence is None else confidence
    return account_evidence(score_pvalues(scores, classes, reference), classes, flags, confidence)


def _stream(settings, evidence) -> AccountState:
    return update_state(AccountState(), evidence, np.ones(len(evidence), bool), settings, 0.0)


def test_the_bank_sees_a_rate_the_single_cusum_could_not():
    """A thief whose exceedance rate at 0.2 is 0.54: between the honest bound and the former
    CUSUM's break-even (about 0.61), where that CUSUM drifted down for ever."""
    reference, settings = _calibrated()
    rng = np.random.default_rng(1)
    n = 3000
    classes = rng.integers(0, CLASSES, n)
    # scores: with probability 0.54 above the class's 80th reference percentile
    high = rng.random(n) < 0.54
    scores = np.where(high, rng.uniform(0.81, 1.0, n), rng.uniform(0.0, 0.79, n))
    state = _stream(settings, _evidence(scores, classes, reference))
    assert 0 < state.suspected_at_query < n
    old_up, old_down = np.log(0.8 / 0.39), np.log(0.2 / 0.61)
    assert 0.54 * old_up + 0.46 * old_down < 0  # the old test's expected step: downwards


def test_honest_streams_stay_below_the_alarm_with_the_stated_bound():
    """Honest scores drawn from the calibration distribution itself (conformal p-values
    against a finite reference), 1,000 accounts x 1,000 queries, one-class users included."""
    reference, settings = _calibrated(seed=2)
    rng = np.random.default_rng(3)
    alarms = 0
    for j in range(1000):
        classes = np.full(1000, j % CLASSES) if j % 4 == 0 else rng.integers(0, CLASSES, 1000)
        state = _stream(settings, _evidence(rng.random(1000), classes, reference))
        alarms += state.suspected_at_query > 0
    assert settings.false_alarm_bound(1000) <= 1e-3
    assert alarms == 0  # the bound allows about 1 of 1,000; any more would be a broken test


def test_tiers_review_first_then_strong_evidence_then_the_operator():
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, strong_min_queries=20)
    unflagged = np.zeros((60, 3))
    unflagged[:, 1] = -1  # class unknown: bounded at 0.4
    state = _stream(settings, unflagged)  # p-value 0: every query exceeds, none flagged
    assert state.tier(0.0, settings) == REVIEW  # costs information, not correctness
    flagged = unflagged.copy()
    flagged[:, 2] = 1.0
    strong = _stream(settings, flagged)
    assert strong.tier(0.0, settings) == SUSPECTED and strong.strong_at_query >= 20
    service = AccountService(settings, MemoryStore(), clock=lambda: 0.0)
    service.record("eve", unflagged, [str(i) for i in range(60)])
    assert service.tier("eve") == REVIEW
    service.confirm("eve")
    assert service.tier("eve") == SUSPECTED
    service.clear("eve")
    assert service.tier("eve") == ""


def _digits(n: int, seed: int) -> np.ndarray:
    """``n`` distinct digit-like images: a random stroke pattern each, 28x28."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, 28, 28), np.float32)
    for i in range(n):
        for _ in range(3):
            r, c = rng.integers(4, 24, 2)
            images[i, 0, r - 4 : r + 4, c - 1 : c + 2] = 1.0
    return images


def _sign_steps(parents: np.ndarray, seed: int, lam: float = 0.1) -> np.ndarray:
    """JBDA's queries: each parent moved by ``lam`` times a sign per pixel, clipped."""
    signs = np.sign(np.random.default_rng(seed).standard_normal(parents.shape))
    return np.clip(parents + lam * signs, 0, 1).astype(np.float32)


def test_lineage_sees_sign_steps_and_not_other_digits_or_faint_ones():
    digits = _digits(400, seed=5)
    none = np.zeros((0, SKETCH_SIZE), np.uint8)
    assert near_repeats(sketches(digits), none).mean() < 0.1
    faint = 0.5 * digits  # half the contrast: the stretch keeps them as far apart as before
    assert near_repeats(sketches(faint), none).sum() == near_repeats(sketches(digits), none).sum()
    children = _sign_steps(digits[:100], seed=6)
    assert near_repeats(sketches(children), sketches(digits)).mean() > 0.95
    assert near_repeats(sketches(children), sketches(digits[100:])).mean() < 0.1
    assert sketches(np.zeros((1, 3, 32, 32))).tolist() == [[0] * SKETCH_SIZE]  # flat: no range
    bad = np.full((1, 1, 28, 28), np.nan, np.float32)  # refused by the defense, sketched first
    with np.errstate(all="raise"):
        assert sketches(bad).tolist() == [[0] * SKETCH_SIZE]


def _flagged(n: int, confidence: float) -> np.ndarray:
    """Evidence of ``n`` queries that all exceed and are flagged, the victim this sure."""
    return np.column_stack([np.zeros(n), np.full(n, -1), np.ones(n), np.full(n, confidence)])


def test_strong_evidence_needs_a_pattern_a_drifting_customer_does_not_show():
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, strong_min_queries=20)
    # A drifting customer: every query flagged, but the victim sure of its answers (blurred
    # digits it still reads) and no query a small step from another: review, not the policy.
    drift = _stream(settings, _flagged(80, 0.9))
    assert drift.tier(0.0, settings) == REVIEW and drift.strong_at_query == 0
    # Queries the victim is unsure of (8x8 digits, photo crops): strong.
    unsure = _stream(settings, _flagged(80, 0.6))
    assert unsure.tier(0.0, settings) == SUSPECTED
    # Sure of them, but each a small step from an earlier query (JBDA): strong.
    state = update_state(
        AccountState(), _flagged(80, 0.98), np.ones(80, bool), settings, 0.0, np.ones(80, bool)
    )
    assert state.tier(0.0, settings) == SUSPECTED and state.flagged_near == 80
    # The rule before the patterns, on request: statistic and flag share alone.
    legacy = replace(settings, strong_patterns=False)
    assert _stream(legacy, _flagged(80, 0.9)).tier(0.0, legacy) == SUSPECTED
    # Three-column evidence (a repository built before the confidence column): as before.
    assert _stream(settings, _flagged(80, 0.9)[:, :3]).tier(0.0, settings) == SUSPECTED


@pytest.mark.parametrize("store_kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_the_service_keeps_sketches_and_finds_a_jbda_thief_but_not_a_new_camera(
    store_kind, tmp_path
):
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, strong_min_queries=20)
    seeds = _digits(40, seed=7)
    rounds = [seeds, _sign_steps(seeds, 8), _sign_steps(seeds, 9)]
    rounds.append(_sign_steps(np.concatenate(rounds[1:]), 10))

    def run(store, thief: bool) -> AccountState:
        service = AccountService(settings, store, clock=lambda: 0.0)
        images = np.concatenate(rounds) if thief else _digits(200, seed=11)
        for start in range(0, len(images), 8):  # eight per request
            batch = images[start : start + 8]
            exceeds = 0.0 if start >= 40 else 0.9  # the seed digits look like the data
            evidence = np.column_stack(
                [np.full(8, exceeds), np.full(8, -1), np.full(8, exceeds == 0), np.full(8, 0.97)]
            )
            service.record("acct", evidence, sample_hashes(batch), (), sketches(batch))
        return service.store.get("acct")

    def stores():
        if store_kind == "memory":
            yield MemoryStore(), MemoryStore()
            return
        with LocalRedis(tmp_path) as redis_server:
            yield RedisStore(redis_server.url, "a"), RedisStore(redis_server.url, "b")

    for thief_store, camera_store in stores():
        thief, camera = run(thief_store, True), run(camera_store, False)
        assert thief.tier(0.0, settings) == SUSPECTED
        assert camera.tier(0.0, settings) == REVIEW and camera.flagged_checked > 50
        assert camera.flagged_near < 0.1 * camera.flagged_checked
        assert thief.flagged_near >= 0.9 * thief.flagged_checked > 0


@pytest.mark.parametrize("pool_kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_jbda_thief_spread_over_unrelated_keys_meets_its_parents_in_the_review_pool(
    pool_kind, tmp_path
):
    """Each request to one of five keys at random: a query's parent sits in another key four
    times in five, so no key's own sketches show the lineage; the pool of keys under review
    does. Five honest new customers reviewed together share no lineage."""
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, strong_min_queries=20)
    seeds = _digits(100, seed=12)
    thief_images = [seeds, _sign_steps(seeds, 13)]
    thief_images.append(_sign_steps(np.concatenate(thief_images), 14))
    thief_images = np.concatenate(thief_images)
    honest_images = _digits(len(thief_images), seed=15)
    rng = np.random.default_rng(16)
    keys = rng.integers(0, 5, len(thief_images))

    def run(service: AccountService, images: np.ndarray, prefix: str) -> list[str]:
        for i, image in enumerate(images):
            exceeds = 0.9 if i < 100 else 0.0  # the seeds look like the data
            evidence = np.array([[exceeds, -1, float(exceeds == 0), 0.97]])
            one = image[None]
            service.record(f"{prefix}{keys[i]}", evidence, sample_hashes(one), (), sketches(one))
        return [service.store.get(f"{prefix}{k}").tier(0.0, settings) for k in range(5)]

    def services():
        if pool_kind == "memory":
            yield lambda pooled: AccountService(
                settings if pooled else replace(settings, lineage_pool=0), MemoryStore()
            )
            return
        with LocalRedis(tmp_path) as redis_server:
            made = iter(range(100))

            def make(pooled: bool) -> AccountService:
                n = next(made)  # each service its own keys in the one Redis
                pool = RedisLineagePool(redis_server.url, key=f"pool{n}") if pooled else None
                return AccountService(
                    settings if pooled else replace(settings, lineage_pool=0),
                    RedisStore(redis_server.url, prefix=f"s{n}"),
                    lineage_pool=pool,
                )

            yield make

    for make in services():
        assert run(make(True), thief_images, "t") == [SUSPECTED] * 5
        assert run(make(False), thief_images, "t") == [REVIEW] * 5  # own sketches only
        assert run(make(True), honest_images, "h") == [REVIEW] * 5


def test_linked_accounts_pool_their_evidence_and_spare_established_neighbours():
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, young_queries=30)
    service = AccountService(settings, MemoryStore(), clock=lambda: 0.0)
    net = ("net:203.0.113.0/24",)
    rng = np.random.default_rng(4)
    # an honest neighbour with a track record (uniform p-values, 40 queries) on the network
    honest = np.column_stack([rng.random(40), np.full(40, -1), np.zeros(40)])
    service.record("neighbour", honest, [f"n{i}" for i in range(40)], net)
    # 40 Sybils, 2 foreign queries each: no account alone comes near the alarm
    for k in range(40):
        ev = np.column_stack([np.zeros(2), np.full(2, -1), np.zeros(2)])
        service.record(f"sybil-{k}", ev, [f"s{k}-{i}" for i in range(2)], net)
    assert all(service.store.get(f"sybil-{k}").tier(0.0, settings) == "" for k in range(40))
    assert service.tier("sybil-7", net) == REVIEW  # the network's pooled evidence binds them
    assert service.tier("newcomer", net) == REVIEW  # a new key on that network too
    assert service.tier("neighbour", net) == ""  # an established account keeps its answers
    assert service.tier("sybil-7") == ""  # the same account seen from another network


def _history(service, name, links, n=30, seed=0):
    """An established customer: ``n`` honest queries before anything changes."""
    rng = np.random.default_rng(seed)
    clean = np.column_stack([rng.uniform(0.5, 1.0, n), np.full(n, -1), np.zeros(n)])
    service.record(name, clean, [f"{name}-h{i}" for i in range(n)], links)


def test_a_drift_of_established_accounts_is_held_and_alerted_not_suspected():
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, young_queries=20)
    monitor = PopulationMonitor(drift_accounts=5, window_s=3600)
    service = AccountService(settings, MemoryStore(), clock=lambda: 0.0, population=monitor)
    drifts: list[list[str]] = []
    service.on_drift.append(lambda held, now: drifts.append(held))
    exceed = np.column_stack([np.zeros(30), np.full(30, -1), np.zeros(30)])
    for j in range(8):  # eight customers get the same new camera, on eight networks
        links = (f"net:10.0.{j}.0/24",)
        _history(service, f"c{j}", links, seed=j)
        service.record(f"c{j}", exceed, [f"{j}-{i}" for i in range(30)], links)
    assert drifts and monitor.drift_since is not None
    # none answered as suspected, not even through its network's state (fed the same queries)
    tiers = [service.tier(f"c{j}", (f"net:10.0.{j}.0/24",)) for j in range(8)]
    assert tiers == [""] * 8
    assert {a for a, s in service.suspected() if s.held} == {f"c{j}" for j in range(8)}


@pytest.mark.redis
def test_gateways_on_one_redis_see_one_population(tmp_path):
    """Eight drifting customers, four behind each of two gateways: neither gateway alone sees
    the five a drift needs; on one Redis their alarms are one population and all are held."""
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, young_queries=20)
    exceed = np.column_stack([np.zeros(30), np.full(30, -1), np.zeros(30)])

    def drift(services: list[AccountService]) -> list[bool]:
        for j in range(8):
            service, links = services[j % 2], (f"net:10.0.{j}.0/24",)
            _history(service, f"c{j}", links, seed=j)
            service.record(f"c{j}", exceed, [f"{j}-{i}" for i in range(30)], links)
        return [s.population.drift_since is not None for s in services]

    with LocalRedis(tmp_path) as redis_server:

        def gateway(shared_alarms: bool, prefix: str) -> AccountService:
            log = RedisAlarmLog(redis_server.url, key=f"{prefix}:alarms") if shared_alarms else None
            monitor = PopulationMonitor(drift_accounts=5, window_s=3600, log=log)
            store = RedisStore(redis_server.url, prefix=prefix)
            return AccountService(settings, store, clock=lambda: 0.0, population=monitor)

        # Each gateway with its own memory of alarms: four each, no drift, all in review.
        apart = [gateway(False, "apart"), gateway(False, "apart")]
        assert drift(apart) == [False, False]
        assert all(apart[0].tier(f"c{j}") == REVIEW for j in range(8))
        # The same traffic with the alarms in Redis: one drift, seen by both, all held.
        shared = [gateway(True, "shared"), gateway(True, "shared")]
        assert drift(shared) == [True, True]
        assert all(shared[0].tier(f"c{j}") == "" for j in range(8))
        assert {a for a, s in shared[1].suspected() if s.held} == {f"c{j}" for j in range(8)}


def test_a_swarm_of_new_keys_is_not_a_drift():
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, young_queries=20)
    monitor = PopulationMonitor(drift_accounts=5, window_s=3600)
    service = AccountService(settings, MemoryStore(), clock=lambda: 0.0, population=monitor)
    exceed = np.column_stack([np.zeros(30), np.full(30, -1), np.zeros(30)])
    for j in range(8):  # eight new keys on eight networks: a thief's Sybils
        service.record(f"s{j}", exceed, [f"{j}-{i}" for i in range(30)], (f"net:10.1.{j}.0/24",))
    assert monitor.drift_since is None
    assert all(service.tier(f"s{j}") == REVIEW for j in range(8))


def test_linked_alarms_do_not_look_like_a_drift():
    settings = AccountSettings(levels=(0.2,), lifts=(0.5,), h=10.0, young_queries=20)
    monitor = PopulationMonitor(drift_accounts=5, window_s=3600)
    service = AccountService(settings, MemoryStore(), clock=lambda: 0.0, population=monitor)
    exceed = np.column_stack([np.zeros(30), np.full(30, -1), np.zeros(30)])
    net = ("net:203.0.113.0/24",)
    for j in range(8):  # eight thieves' keys on one network, each with a history
        _history(service, f"t{j}", net, seed=j)
        service.record(f"t{j}", exceed, [f"{j}-{i}" for i in range(30)], net)
    assert monitor.drift_since is None
    assert all(service.tier(f"t{j}") == REVIEW for j in range(8))


def test_client_address_trusts_forwarded_for_only_from_a_trusted_proxy():
    assert network_of("203.0.113.77") == "net:203.0.113.0/24"
    assert network_of("2001:db8:1:2:3:4:5:6") == "net:2001:db8:1:2::/64"
    assert network_of("not an address") is None
    assert network_of("10.1.2.3") is None and network_of("127.0.0.1") is None  # not public
    assert client_address("ipv4:10.1.1.1:555", "198.51.100.9", ["10.1.1.1"]) == "198.51.100.9"
    assert client_address("ipv4:10.9.9.9:555", "198.51.100.9", ["10.1.1.1"]) == "10.9.9.9"
    assert client_address("ipv6:[2001:db8::1]:80", None, []) == "2001:db8::1"
    assert account_links("203.0.113.5", "acme") == ("net:203.0.113.0/24", "group:acme")


@pytest.mark.parametrize("rows", [1, 5])
def test_evidence_round_trip_through_the_gateway_shapes(rows):
    from tritonclient.grpc import service_pb2

    from same_defense.core import ACCOUNT_OUTPUT, ACCOUNT_OUTPUT_WIDTH
    from same_defense.gateway.accounting import finish_infer

    ev = np.arange(rows * ACCOUNT_OUTPUT_WIDTH, dtype=np.float32).reshape(rows, -1)
    response = service_pb2.ModelInferResponse(model_name="same")
    response.outputs.add(name=ACCOUNT_OUTPUT, datatype="FP32", shape=[rows, ACCOUNT_OUTPUT_WIDTH])
    response.raw_output_contents.append(ev.tobytes())
    _, got = finish_infer(response.SerializeToString())
    np.testing.assert_array_equal(got, ev)
    assert sample_hashes(np.zeros((rows, 1, 2, 2), np.float32))[0]
    # a repository built before the confidence column: three columns, still read
    old = service_pb2.ModelInferResponse(model_name="same")
    old.outputs.add(name=ACCOUNT_OUTPUT, datatype="FP32", shape=[rows, 3])
    old.raw_output_contents.append(ev[:, :3].copy().tobytes())
    np.testing.assert_array_equal(finish_infer(old.SerializeToString())[1], ev[:, :3])


def test_the_gateway_links_a_call_by_network_and_key_group(tmp_path):
    from same_defense.accounts import KeyStore
    from same_defense.gateway.accounting import Authenticator
    from same_defense.gateway.metrics import GatewayMetrics
    from same_defense.gateway.rules import AccountRules, Caller, GatewayCore, GatewayPolicy

    keys = KeyStore(tmp_path / "keys.json")
    keys.add("bot-1", group="reseller")
    keys.add("alice")
    rules = AccountRules(trusted_proxies=("10.0.0.5",))
    core = GatewayCore(
        None, GatewayPolicy(), Authenticator(keys=keys), None, GatewayMetrics(), None, rules
    )
    via_proxy = Caller([("x-forwarded-for", "203.0.113.9")], "ipv4:10.0.0.5:4000")
    assert core.links("bot-1", via_proxy) == ("net:203.0.113.0/24", "group:reseller")
    forged = Caller([("x-forwarded-for", "203.0.113.9")], "ipv4:198.51.100.7:4000")
    assert core.links("alice", forged) == ("net:198.51.100.0/24",)  # header not believed
    off = GatewayCore(
        None,
        GatewayPolicy(),
        Authenticator(keys=keys),
        None,
        GatewayMetrics(),
        None,
        AccountRules(link_accounts=False),
    )
    assert off.links("bot-1", via_proxy) == ()


def test_monitor_answers_truthfully_at_every_tier():
    from same_defense.core import DefenseSettings, defend

    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 4))
    err = np.array([0.0, 0.0, 0.0, 9.0, 9.0, 9.0])  # the last three flagged
    settings = DefenseSettings(threshold=1.0, policy="monitor")
    truth = defend(logits, err, logits, settings).true_probs
    for tier in ("", REVIEW, SUSPECTED):
        np.testing.assert_allclose(defend(logits, err, logits, settings, tier).probs, truth)
    graded = defend(logits, err, logits, DefenseSettings(threshold=1.0))
    assert (graded.probs[3:].max(axis=1) == 1.0).all()  # flagged: top-1 only
    np.testing.assert_array_equal(graded.labels, truth.argmax(axis=1))  # labels kept
