"""The account-level evaluation on the tiny repository: the thief's oracle goes through the
real AccountService, honest streams are not suspected, and the quick CLI writes its report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from same_defense.data import load_dataset, make_query_set, split_dataset
from same_defense.evaluation.account_population import AccountOracle, account_service
from same_defense.evaluation.accounts import main as accounts_main
from same_defense.evaluation.honest_population import (
    HONEST_KINDS,
    clopper_pearson_upper,
    honest_requests,
    run_honest_population,
)
from same_defense.serving.inprocess import InProcessSame


@pytest.fixture(scope="module")
def pipeline(tiny_repository) -> InProcessSame:
    return InProcessSame(tiny_repository, threads=1)


@pytest.fixture(scope="module")
def test_split(pipeline):
    m = pipeline.manifest
    return split_dataset(load_dataset(m["dataset"]), seed=m["seed"]).test


def test_noise_thief_is_suspected_and_then_answered_with_the_policy(pipeline):
    service = account_service(pipeline.manifest)
    shape = tuple(pipeline.manifest["input_shape"])
    noise = make_query_set("noise", 256, shape, seed=3)
    oracle = AccountOracle(pipeline, service, accounts=1, budget=256)
    answers = [oracle.query(noise[i : i + 32]) for i in range(0, 256, 32)]
    labels = np.concatenate([a.labels for a in answers])
    summary = oracle.summary()
    # Noise exceeds at nearly every query: the CUSUM crosses h within a few dozen queries.
    assert summary["accounts_suspected"] == 1
    assert summary["detection_delay"] is not None and summary["detection_delay"] <= 64
    forced = oracle.view("forced")
    assert forced[-32:].all() and not forced[:32].any()  # suspicion applies from the next batch
    assert oracle.first_suspected["thief-0"] <= 96
    out = pipeline.graphs.run(noise)
    truth = out.logits.argmax(axis=1)
    assert (labels[forced] != truth[forced]).mean() > 0.9  # misinformation, not the victim
    assert oracle.queries_used == 256 and len(oracle.view("score")) == 256


def test_round_robin_spreads_batches_and_dilutes_evidence(pipeline):
    shape = tuple(pipeline.manifest["input_shape"])
    noise = make_query_set("noise", 128, shape, seed=4)
    oracle = AccountOracle(pipeline, account_service(pipeline.manifest), accounts=4)
    for i in range(0, 128, 16):
        oracle.query(noise[i : i + 16])
    # batch i went to account i % 4; 16 queries per account cannot raise an alarm (h / step up
    # is above 16), so no second batch is forced
    assert list(oracle.view("account")[::16]) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert not oracle.view("forced").any()


def test_honest_uniform_accounts_are_not_suspected(pipeline, test_split):
    out = pipeline.graphs.run(test_split.images)
    service = account_service(pipeline.manifest)
    result = run_honest_population(
        pipeline.settings,
        service,
        out,
        test_split.images,
        test_split.labels,
        accounts=6,
        queries=600,
        kinds=("uniform",),
    )
    assert result["overall"]["suspected"] == 0
    assert result["overall"]["lost_to_suspicion_points"] == 0
    assert len(list(service.store.accounts())) == 6  # every request went through the service
    assert all(s.distinct > 0 for _, s in service.store.accounts())


def test_honest_request_kinds_have_the_stated_shape():
    labels = np.repeat(np.arange(10), 75)
    for kind in HONEST_KINDS:
        reqs = honest_requests(kind, 3, labels, 1000, np.random.default_rng(0))
        picks = np.concatenate(reqs)
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
            "noise",
            "--honest-accounts",
            "24",
            "--honest-queries",
            "200",
        ]
    )
    assert rc == 0
    report = json.loads((out / "accounts.json").read_text())
    assert report["schema_version"] == 1
    assert {"settings", "honest", "attacks", "goals", "timings"} <= set(report)
    assert report["honest"]["overall"]["accounts"] == 24
    assert {(r["attack"], r["accounts"]) for r in report["attacks"]} >= {("noise", 1), ("noise", 0)}
    for g in report["goals"]:
        assert {"goal", "measured", "met"} <= set(g)
    assert (out / "accounts.md").read_text().startswith("# Account-level SAME")
    assert (out / "accounts_clone_vs_accounts.png").stat().st_size > 0
