"""Load generation: the pure summaries, a short real Locust run and a tiny benchmark."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from same_harness.bench import run as bench
from same_harness.bench.closed_loop import closed_loop, make_batches
from same_harness.bench.targets import TARGETS
from same_harness.load import loadtest, loadtest_report
from same_harness.load.common import parse_overrides
from same_harness.load.stats import (
    cost_breakdown,
    gap_breakdown,
    latency_summary,
    ratio,
    read_locust_stats,
)

LOCUST_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
)


def test_latency_summary_reports_percentiles_and_throughput():
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    s = latency_summary(latencies, elapsed_s=2.0, batch_size=8)
    assert s["requests"] == 100 and s["images"] == 800
    assert s["requests_per_s"] == 50.0 and s["images_per_s"] == 400.0
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["p50_ms"] < s["p95_ms"] < s["p99_ms"]


def test_latency_summary_of_nothing_and_bad_window():
    empty = latency_summary([], elapsed_s=1.0, batch_size=1)
    assert empty["requests"] == 0 and empty["p99_ms"] is None
    with pytest.raises(ValueError):
        latency_summary([0.1], elapsed_s=0, batch_size=1)


def test_ratio_handles_missing_values():
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 1.0) is None and ratio(1.0, 0) is None


def test_cost_breakdown_of_cpu_times():
    g = cost_breakdown(2500.0, 500.0, 1800.0, 200.0)
    assert g["extra_us_per_image"] == 2000 and g["compute_us_per_image"] == 1600
    assert g["serving_overhead_us_per_image"] == 400 and g["compute_share_of_gap"] == 0.8


def test_gap_breakdown_splits_compute_from_overhead():
    # served: same 250/s (4 ms), victim 1000/s (1 ms); in-process: 400/s (2.5 ms), 4000/s
    g = gap_breakdown(250, 1000, 400, 4000)
    assert g["extra_us_per_image"] == pytest.approx(3000)
    assert g["compute_us_per_image"] == pytest.approx(2250)
    assert g["serving_overhead_us_per_image"] == pytest.approx(750)
    assert g["compute_share_of_gap"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        gap_breakdown(0, 1, 1, 1)


def test_read_locust_stats_and_summarise(tmp_path):
    rows = [
        "grpc:same,benign,100,0,40,45.5,10,300,80,5.0,0.0,40,50,60,70,90,120,200,250,300,300,300",
        "grpc:same,attacker-synthetic,50,0,60,70,20,500,1280,2.5,0.0,60,70,80,90,100,"
        "150,300,400,500,500,500",
        ",Aggregated,150,0,45,50,10,500,400,7.5,0.0,45,55,65,75,95,130,250,300,500,500,500",
    ]
    path = tmp_path / "same_stats.csv"
    path.write_text(LOCUST_HEADER + "\n".join(rows) + "\n")
    stats = read_locust_stats(path)
    assert set(stats) == {"benign", "attacker-synthetic", "Aggregated"}
    assert stats["benign"]["p99_ms"] == 250 and stats["benign"]["requests_per_s"] == 5
    victim = {k: {**v, "p99_ms": v["p99_ms"] / 5} for k, v in stats.items()}
    batches = {"benign": 1, "attacker-synthetic": 16, "attacker-proxy": 16}
    summary = loadtest_report.summarise({"same": stats, "victim": victim}, batches, {})
    assert summary["failures_total"] == 0
    assert summary["models"]["same"]["attacker-synthetic"]["images_per_s"] == 40
    assert summary["same/victim"]["benign"]["p99_ms"] == 5.0
    assert "all" in summary["models"]["same"]
    summary["config"] = {"users": 3, "weights": "1:1:1", "run_time": "5s"}
    loadtest_report.plot(summary, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_run_time_parsing():
    assert loadtest.run_seconds("90") == 90
    assert loadtest.run_seconds("60s") == 60
    assert loadtest.run_seconds("1m30s") == 90
    with pytest.raises(ValueError):
        loadtest.run_seconds("soon")


def test_overrides_are_checked():
    assert parse_overrides(["reconstructor_instances=2", "policy=monitor"]) == {
        "reconstructor_instances": 2,
        "policy": "monitor",
    }
    with pytest.raises(SystemExit):
        parse_overrides(["reconstructor_instance=2"])


def test_bench_serves_the_victim_on_equal_footing_by_default(tmp_path):
    from same_defense.export.model_configs import ServingSettings, write_configs

    write_configs(tmp_path, ServingSettings(victim_instances=1, reconstructor_instances=2))
    assert bench.equal_footing(tmp_path, {}) == {"victim_instances": 2}
    # an explicit choice wins, and a victim that already has as many is left alone
    assert bench.equal_footing(tmp_path, {"victim_instances": 1}) == {"victim_instances": 1}
    write_configs(tmp_path, ServingSettings(victim_instances=3, reconstructor_instances=2))
    assert bench.equal_footing(tmp_path, {"policy": "monitor"}) == {"policy": "monitor"}


def test_batch1_figures_are_judged_against_the_issue_bounds():
    from same_harness.bench.derive import batch1

    def cell(p50, gateway_cpu=None):
        out = {"p50_ms": p50, "p99_ms": 2 * p50, "images_per_s": 1.0}
        return out | ({"gateway_cpu_ms_per_request": gateway_cpu} if gateway_cpu else {})

    results = {
        "victim": {"1": {"1": cell(1.0)}},
        "same": {"1": {"1": cell(1.8)}},
        "gateway_same_keys_only": {"1": {"1": cell(2.0, 0.3)}},
        "gateway_same": {"1": {"1": cell(2.5, 0.7)}},
    }
    derived = bench.derive(results, [1], [1], server_cpu=False)
    figures = derived["batch1"]
    assert figures["same_added_p50_ms"] == pytest.approx(0.8)
    assert figures["gateway_added_p50_ms"] == pytest.approx(0.7)
    assert figures["gateway_keys_only_added_p50_ms"] == pytest.approx(0.2)
    assert figures["gateway_cpu_ms_per_request"] == 0.7
    assert figures["goals_met"] == {
        "same_added_p50_ms": True,
        "gateway_added_p50_ms": False,
        "gateway_cpu_ms_per_request": False,
    }
    # nothing measured through a gateway: those goals are not met, not guessed
    assert not batch1({}, {})["goals_met"]["gateway_cpu_ms_per_request"]


def test_closed_loop_counts_requests_in_the_window():
    def worker():
        return (lambda batch: time.sleep(0.002)), (lambda: None)

    batches = make_batches(np.zeros((10, 1, 4, 4), np.float32), 4)
    assert len(batches) == 2 and batches[0].shape == (4, 1, 4, 4)
    r = closed_loop(worker, batches, concurrency=3, warmup_s=0.05, duration_s=0.3)
    assert r["requests"] > 0 and r["images"] == 4 * r["requests"]
    assert r["images_per_s"] > 0 and r["p50_ms"] >= 2.0


def test_closed_loop_counts_failed_requests_and_gives_up_on_a_dead_target():
    calls = {"n": 0}

    def flaky():
        def call(batch):
            calls["n"] += 1
            if calls["n"] % 2:
                raise ConnectionError("refused")
            time.sleep(0.001)

        return call, (lambda: None)

    batches = [np.zeros((2, 1, 4, 4), np.float32)]
    r = closed_loop(flaky, batches, concurrency=2, warmup_s=0.0, duration_s=0.2)
    assert r["errors"] > 0 and r["requests"] > 0 and "refused" in r["first_error"]

    def dead():
        def call(batch):
            raise ConnectionError("gone")

        return call, (lambda: None)

    with pytest.raises(RuntimeError, match="every request failed"):
        closed_loop(dead, batches, concurrency=2, warmup_s=0.0, duration_s=0.2)


def _fake_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


@pytest.mark.server
def test_locust_run_has_both_request_kinds_and_no_failures(server, tiny_repository, tmp_path):
    data_file = tmp_path / "data.npz"
    np.savez(
        data_file, benign=_fake_images(50), synthetic=_fake_images(64, 1), proxy=_fake_images(64, 2)
    )
    args = loadtest.parse_args(
        [
            "--repository",
            str(tiny_repository),
            "--out",
            str(tmp_path),
            "--users",
            "3",
            "--spawn-rate",
            "3",
            "--run-time",
            "4s",
            "--benign-weight",
            "1",
            "--synthetic-weight",
            "1",
            "--proxy-weight",
            "1",
            "--attack-batch",
            "4",
            "--attack-burst",
            "2",
        ]
    )
    command = loadtest.locust_command(args, "same", server.grpc_url, data_file)
    code = loadtest.run_locust(command, tmp_path / "same.log", timeout_s=90)
    log = (tmp_path / "same.log").read_text()
    assert code == 0, log[-3000:]
    stats = read_locust_stats(tmp_path / "same_stats.csv")
    for name in ("benign", "attacker-synthetic", "attacker-proxy"):
        assert stats[name]["requests"] > 0, (name, log[-3000:])
        assert stats[name]["failures"] == 0
    assert stats["Aggregated"]["failures"] == 0
    assert (tmp_path / "same.html").exists()


@pytest.mark.server
def test_tiny_bench_writes_the_expected_keys(server, tiny_repository, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "benign_images", lambda manifest: _fake_images(40))
    output = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--url",
                server.grpc_url,
                "--repository",
                str(tiny_repository),
                "--batch-sizes",
                "1",
                "4",
                "--concurrency",
                "1",
                "2",
                "--warmup",
                "0.1",
                "--duration",
                "0.4",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    report = json.loads(output.read_text())
    assert report["failed_requests"] == 0
    for target in TARGETS:
        for b in ("1", "4"):
            for c in ("1", "2"):
                cell = report["results"][target][b][c]
                assert cell["images_per_s"] > 0 and cell["p50_ms"] > 0 and cell["p99_ms"] > 0
                assert cell["errors"] == 0
    assert report["results"]["same"]["4"]["2"]["server"]["defense"]["requests"] > 0
    for label in ("same/victim", "same/inprocess_same"):
        assert report["ratios"][label]["4"]["2"]["throughput"] > 0
    assert report["saturation"]["1"]["same/victim"] > 0
    assert "gap_wall" in report["saturation"]["4"] and "peak" in report["saturation"]
    assert set(report["goals"]["1"]) >= {"throughput_goal_met", "p99_goal_met"}
    assert "p50" in report["added_latency_ms"]["account_layer"]["1"]["1"]
    cost = report["account_layer_us"]["4"]
    assert cost["with_accounts"] > cost["keys_only"] > 0 and "added_with_accounts_redis" in cost
    assert report["ratios"]["gateway_same/same"]["4"]["2"]["throughput"] > 0
    for target in bench.GATEWAY:  # the gateway's own CPU, per request
        assert report["results"][target]["1"]["1"]["gateway_cpu_ms_per_request"] > 0
    assert report["batch1"]["gateway_cpu_ms_per_request"] > 0
    assert report["batch1"]["same_added_p50_ms"] is not None
