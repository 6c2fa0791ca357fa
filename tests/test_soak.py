"""The soak report's memory windows, on samples with known answers."""

from same_harness.load.soak import window_means

MIB = 2**20


def _sample(t: float, server_mib: float) -> dict:
    return {
        "t_s": t,
        "tritonserver": 10 * MIB,
        "stubs": {"victim": (server_mib - 10) * MIB},
        "server_total": server_mib * MIB,
        "gateway_process": 50 * MIB,
    }


def test_growth_compares_first_and_last_minute():
    samples = [
        _sample(t, 100 if t <= 60 else (110 if t >= 540 else 105)) for t in range(0, 601, 10)
    ]
    memory = window_means(samples, duration_s=600)
    assert memory["server_total"]["start_mib"] == 100.0
    assert memory["server_total"]["end_mib"] == 110.0
    assert memory["server_total"]["growth"] == 0.1
    assert memory["stubs"]["victim"]["growth"] == 0.1111
    assert memory["gateway_process"]["growth"] == 0.0
    assert memory["first_window"] == 7 and memory["last_window"] == 7


def test_short_soak_through_the_gateway(tiny_repository, tmp_path):
    """A 15 s run of the real thing: Locust users through the gateway, memory sampled."""
    import json

    from same_harness.load.soak import main  # runs Locust as a subprocess: never import it here

    report_path = tmp_path / "soak.json"
    code = main(
        [
            "--repository",
            str(tiny_repository),
            "--run-time",
            "15s",
            "--users",
            "4",
            "--interval",
            "2",
            "--out",
            str(tmp_path / "soak"),
            "--report",
            str(report_path),
            "--log-file",
            str(tmp_path / "triton.log"),
        ]
    )
    report = json.loads(report_path.read_text())
    assert report["failures"] == 0 and report["requests_served"] > 0
    assert report["defense_counters"]["scored"] > 0
    assert report["memory"]["samples"] >= 3
    assert report["passed"] is False and code == 1  # 15 s is not a soak: never reported as one


def test_short_under_attack_run_reports_honest_latency_with_and_without_attackers(
    tiny_repository, tmp_path
):
    """Three 5 s Locust runs through the gateway: honest alone, beside attackers, alone."""
    import json

    from same_harness.load.under_attack import RUNS, main  # Locust runs as a subprocess

    report_path = tmp_path / "under_attack.json"
    assert (
        main(
            ["--repository", str(tiny_repository), "--run-time", "5s"]
            + ["--honest-users", "2", "--attackers", "1", "--out", str(tmp_path / "runs")]
            + ["--report", str(report_path), "--log-file", str(tmp_path / "triton.log")]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert set(report["runs"]) == set(RUNS)
    assert all(report["runs"][run]["honest"]["requests"] > 0 for run in RUNS)
    assert report["honest_failures"] == 0
    assert "attacker-proxy" in report["runs"]["attacked"]
    assert "attacker-proxy" not in report["runs"]["alone"]
    assert report["honest_p99_ratio"] is not None
    assert report["gateway"]["suspected_in_flight"] == "1"  # the lane is on by default
