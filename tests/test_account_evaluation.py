"""The account-level evaluation on the tiny repository: the thief's oracle goes through the
real AccountService, honest streams are not suspected, and the quick CLI writes its report."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from same_harness.attacks import CloneConfig
from same_harness.data.queries import make_query_set
from same_harness.evaluation.account_population import AccountOracle, Dilution, account_service
from same_harness.evaluation.accounts import AccountEvalConfig, case_key, run_thieves
from same_harness.evaluation.accounts import main as accounts_main
from same_harness.evaluation.accounts_report import summarise, thief_goals
from same_harness.evaluation.honest_population import (
    FEW_COPIES,
    HONEST_KINDS,
    answer_set,
    clopper_pearson_upper,
    honest_requests,
    run_behaviours,
)

from same_defense.data import load_dataset, split_dataset
from same_defense.runtime.inprocess import InProcessSame


@pytest.fixture(scope="module")
def pipeline(tiny_repository) -> InProcessSame:
    return InProcessSame(tiny_repository, threads=1)


@pytest.fixture(scope="module")
def test_split(pipeline):
    m = pipeline.manifest
    return split_dataset(load_dataset(m["dataset"]), seed=m["seed"]).test


def test_noise_thief_is_reviewed_then_answered_with_the_policy(pipeline):
    service = account_service(pipeline.manifest)
    shape = tuple(pipeline.manifest["input_shape"])
    noise = make_query_set("noise", 256, shape, seed=3)
    oracle = AccountOracle(pipeline, service, accounts=1, budget=256)
    answers = [oracle.query(noise[i : i + 32]) for i in range(0, 256, 32)]
    labels = np.concatenate([a.labels for a in answers])
    summary = oracle.summary()
    # Noise exceeds at nearly every level: the bank crosses h within a few dozen queries.
    assert summary["accounts_suspected"] == 1
    assert summary["detection_delay"] is not None and summary["detection_delay"] <= 64
    tier = oracle.view("tier")
    # the alarm fires inside the first request (about 10 queries): answered again as reviewed
    assert (tier[:32] == 1).all()
    # nearly all flagged: strong evidence once 50 queries are in, the policy from then on
    assert (tier[-64:] == 2).all()
    out = pipeline.graphs.run(noise)
    truth = out.logits.argmax(axis=1)
    forced = tier == 2
    assert (labels[forced] != truth[forced]).mean() > 0.9  # misinformation, not the victim
    assert oracle.queries_used == 256 and len(oracle.view("score")) == 256


def test_requests_go_round_robin_and_few_queries_per_account_raise_nothing(pipeline):
    shape = tuple(pipeline.manifest["input_shape"])
    noise = make_query_set("noise", 32, shape, seed=4)
    oracle = AccountOracle(pipeline, account_service(pipeline.manifest), accounts=4)
    for i in range(0, 32, 8):
        oracle.query(noise[i : i + 8])
    # batch i went to account i % 4; 8 queries per account stay below h
    assert list(oracle.view("account")[::8]) == [0, 1, 2, 3]
    assert not oracle.view("tier").any()
    single = AccountOracle(pipeline, account_service(pipeline.manifest), 4, request_size=1)
    single.query(noise[:8])
    assert list(single.view("account")) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_a_shuffled_thief_sends_each_request_to_a_random_account(pipeline):
    shape = tuple(pipeline.manifest["input_shape"])
    noise = make_query_set("noise", 16, shape, seed=4)

    def accounts(seed: int) -> list[int]:
        oracle = AccountOracle(
            pipeline,
            account_service(pipeline.manifest),
            4,
            request_size=1,
            spread="shuffled",
            seed=seed,
        )
        oracle.query(noise)
        return list(oracle.view("account"))

    first = accounts(0)
    assert first == accounts(0) and first != accounts(1)  # seeded
    assert set(first) <= {0, 1, 2, 3} and first != [0, 1, 2, 3] * 4
    with pytest.raises(ValueError, match="spread"):
        AccountOracle(pipeline, account_service(pipeline.manifest), 2, spread="sideways")


def test_a_reused_report_runs_only_the_cases_it_lacks(tiny_repository):
    config = AccountEvalConfig(
        repository=str(tiny_repository),
        budget=64,
        seeds=(0,),
        attacks=("knockoff-digits8x8",),
        outputs=("probs",),
        extra_thieves=(),
        account_counts=(1,),
        linked_counts=(),
        dilutions=(),
        responses=("graded",),
        clone=CloneConfig(epochs=1),
        workers=1,
    )
    cases = config.cases()
    assert len(cases) == 3  # undefended, one account, one account at 8 per request
    # earlier records: a report from before the spread field existed
    earlier = [
        {k: v for k, v in asdict(c).items() if k != "spread"} | {"clone_accuracy": -1.0}
        for c in cases[1:]
    ]
    records = run_thieves(config, earlier)
    assert len(records) == 3 and records[:2] == earlier  # kept as they were
    assert case_key(records[2]) == case_key(asdict(cases[0])) and records[2]["queries_used"]


def test_dilution_interleaves_copies_and_returns_the_foreign_answers(pipeline, test_split):
    shape = tuple(pipeline.manifest["input_shape"])
    noise = make_query_set("noise", 10, shape, seed=5)
    dilution = Dilution(test_split.images[:5], ratio=2, seed=0)
    oracle = AccountOracle(
        pipeline, account_service(pipeline.manifest), 1, budget=10, dilution=dilution
    )
    answer = oracle.query(noise)
    assert len(answer.labels) == 10  # the attack sees its own queries only
    foreign = oracle.view("foreign")
    assert len(foreign) == 30 and list(foreign[:6]) == [True, False, False, True, False, False]
    images, transcript = oracle.transcript()
    assert len(images) == len(transcript.labels) == 30  # the thief trains on the copies too


def test_honest_uniform_accounts_are_not_suspected(pipeline, test_split):
    out = pipeline.graphs.run(test_split.images)
    answered = answer_set(out, test_split.images, test_split.labels, pipeline.settings)
    services = []

    def service_for():
        services.append(account_service(pipeline.manifest))
        return services[-1]

    result = run_behaviours(service_for, {"test": answered}, 6, 600, kinds=("uniform",))
    assert result["overall"]["suspected"] == 0
    assert result["overall"]["accuracy_lost_points"] <= 1.0  # flagged queries keep top-1
    accounts = [a for a, _ in services[0].store.accounts() if not a.startswith("~")]
    assert len(accounts) == 6  # every request went through the service
    assert all(services[0].store.get(a).distinct > 0 for a in accounts)


def test_honest_request_kinds_have_the_stated_shape():
    labels = np.repeat(np.arange(10), 80)
    for kind in HONEST_KINDS:
        reqs = honest_requests(kind, 3, labels, 1000, np.random.default_rng(0))
        picks = np.concatenate(reqs)
        if kind == "young":
            assert 5 <= len(picks) <= 50 and max(len(r) for r in reqs) <= 4
            continue
        if kind == "perturbed-few":  # a few digits' adjacent copies in the perturbed set
            assert len(set(picks // FEW_COPIES)) == 3 and len(picks) == 3 * FEW_COPIES
            continue
        if kind == "heavy":
            assert len(set(picks)) == len(picks) == 800  # distinct, as many as the set holds
            continue
        assert len(picks) == 1000, kind
        if kind == "single-class":
            assert set(labels[picks]) == {3}
        if kind == "two-class":
            assert len(set(labels[picks])) == 2
        if kind == "repeated":
            assert len(set(picks)) <= 20
        if kind == "bursts":
            assert all(len(set(labels[r])) == 1 for r in reqs) and len(reqs[0]) == 64
        if kind == "small-batches":
            assert max(len(r) for r in reqs) <= 4


def test_clopper_pearson_upper_bound():
    assert clopper_pearson_upper(0, 1000) == pytest.approx(0.00368, abs=1e-5)
    assert clopper_pearson_upper(5, 5) == 1.0
    assert 0.1 < clopper_pearson_upper(10, 100) < 0.2


def test_quick_cli_writes_the_report(tiny_repository, tmp_path):
    out = tmp_path / "reports"
    rc = accounts_main(
        [
            "--repository",
            str(tiny_repository),
            "--out",
            str(out),
            "--quick",
            "--budget",
            "192",
            "--attacks",
            "knockoff-digits8x8",
            "--outputs",
            "probs",
            "--honest-accounts",
            "24",
            "--honest-queries",
            "200",
        ]
    )
    assert rc == 0
    report = json.loads((out / "accounts.json").read_text())
    assert report["schema_version"] == 2
    assert {"settings", "honest", "shifted", "thieves", "pool_only", "goals"} <= set(report)
    assert report["honest"]["overall"]["accounts"] == 24
    cases = {(r["attack"], r["accounts"], r["ratio"]) for r in report["thieves"]}
    assert {("knockoff-digits8x8", 0, 0), ("knockoff-digits8x8", 1, 0)} <= cases
    assert ("knockoff-digits8x8", 1, 2) in cases  # a diluting thief
    own = {(r["attack"], r["seed"], r["pool"]) for r in report["own_data"]}
    # the pool alone, the 8x8 set's own labels, and both together for the diluting thief
    assert {(None, 0, 50), ("knockoff-digits8x8", 0, 0), ("knockoff-digits8x8", 0, 50)} <= own
    names = [g["goal"] for g in report["goals"]]
    assert any("own labels + 5 points" in n for n in names)
    assert any("own data + 5 points" in n for n in names)
    assert set(report["shifted"]) == {"graded", "review-only", "legacy"}
    assert "blur@1" in report["shifted"]["graded"]
    for g in report["goals"]:
        assert {"goal", "measured", "met"} <= set(g)
    md = (out / "accounts.md").read_text()
    assert md.startswith("# Account-level SAME") and "own labels (no query)" in md
    assert (out / "accounts_clone_vs_accounts.png").stat().st_size > 0
    assert (out / "accounts_clone_vs_dilution.png").stat().st_size > 0


def test_summary_judges_the_service_by_what_it_adds_to_the_thiefs_own_labels():
    """A thief whose source labels itself is judged by clone - own-labels clone, per seed."""
    base = {
        "attack": "knockoff-fonts",
        "output": "probs",
        "links": "unrelated",
        "response": "graded",
    }
    plain = {"request_size": 1, "ratio": 0, "pool": 0, "misinformed_share": 0.0}
    records = [
        {**base, **plain, "accounts": 0, "seed": 0, "clone_accuracy": 0.62},
        {
            **base,
            **plain,
            "accounts": 1,
            "seed": 0,
            "clone_accuracy": 0.61,
            "detection_delay": None,
        },
        {
            **base,
            **plain,
            "accounts": 1,
            "seed": 1,
            "clone_accuracy": 0.70,
            "detection_delay": None,
        },
        {
            **base,
            "request_size": 1,
            "accounts": 1,
            "seed": 0,
            "pool": 50,
            "ratio": 2,
            "clone_accuracy": 0.95,
            "misinformed_share": 0.0,
            "detection_delay": None,
        },
    ]
    own = [
        {"attack": "knockoff-fonts", "seed": 0, "pool": 0, "clone_accuracy": 0.60},
        {"attack": "knockoff-fonts", "seed": 1, "pool": 0, "clone_accuracy": 0.62},
        {"attack": None, "seed": 0, "pool": 50, "clone_accuracy": 0.87},
        {"attack": "knockoff-fonts", "seed": 0, "pool": 50, "clone_accuracy": 0.91},
    ]
    summary = summarise(records, own)
    row = summary["thieves"][0]
    assert row["one_account_gain_worst"] == pytest.approx(0.08)  # seed 1: 0.70 - 0.62
    assert row["own_labels"] == pytest.approx(0.61)
    (d,) = row["dilution"]
    assert (d["pool_only"], d["own_data"]) == (0.87, 0.91)
    judged = {g["goal"]: g for g in thief_goals(row)}
    assert judged[
        "one account, 1/request: clone <= own labels + 5 points (knockoff-fonts, probs; worst seed)"
    ] == {
        "goal": "one account, 1/request: clone <= own labels + 5 points "
        "(knockoff-fonts, probs; worst seed)",
        "measured": 8.0,
        "met": False,
    }
    assert judged["dilution P50 R2: clone <= pool-only + 5 points (knockoff-fonts, probs)"][
        "measured"
    ] == pytest.approx(8.0)
    assert judged["dilution P50 R2: clone <= own data + 5 points (knockoff-fonts, probs)"]["met"]


def test_clone_spread_trains_each_target_once_per_seed(tiny_repository, tmp_path):
    from same_harness.evaluation.clone_spread import main as spread_main

    out = tmp_path / "spread"
    argv = ["--repository", str(tiny_repository), "--out", str(out), "--budget", "128"]
    assert spread_main([*argv, "--sources", "digits8x8", "--seeds", "0", "1"]) == 0
    report = json.loads((out / "clone_spread.json").read_text())
    assert [r["target"] for r in report["rows"]] == ["probs", "labels", "own"]
    for r in report["rows"]:
        assert len(r["accuracies"]) == 2 and r["min"] <= r["mean"] <= r["max"] <= 1
        assert 0 < r["victim_accuracy_on_source"] <= 1
    assert "| digits8x8 |" in (out / "clone_spread.md").read_text()


def test_the_unlabelled_thief_photographs_the_pool_up_to_its_budget(tiny_repository):
    """Real digits without labels: its queries are copies of the pool split, and it holds no
    labels of its own, so what it gets is all the service's."""
    from same_harness.evaluation.accounts import holds_own_labels
    from same_harness.evaluation.setup import EvalConfig, context, make_attack

    ctx = context(EvalConfig(repository=str(tiny_repository), budget=96, grpc_check=0))
    thief = make_attack("knockoff-unlabelled", ctx)
    assert len(thief.pool) >= 96 and thief.pool.shape[1:] == ctx.splits.pool.images.shape[1:]
    assert len(thief.pool) % len(ctx.splits.pool) == 0  # whole photo sets of every real digit
    assert not holds_own_labels("knockoff-unlabelled") and holds_own_labels("knockoff-fonts")
