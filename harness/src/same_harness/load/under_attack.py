"""``make under-attack``: what honest users feel while thieves load the protected endpoint.

One server (Triton behind the gateway, with the account-level defense, as deployed) and three
Locust runs in a row against it: honest users alone, the same honest users with attackers
beside them, and honest users alone again (the second baseline shows how far the machine's
background load moved meanwhile). Honest users send one test image at a time with think
time (loadtest/locustfile.py's ``BenignUser``); attackers send bursts of batched proxy and
noise queries with none. Every simulated user has its own API key.

The goal (issue 20): honest p99 under attack at most twice honest p99 without attackers.
Writes ``reports/under_attack.json``: per run, honest and attacker p50/p95/p99, requests and
failures (an attacker's refused request is a failure), and the accounts under suspicion.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from same_defense.accounts import KeyStore
from same_defense.gateway.options import AccountOptions
from same_defense.ports import free_port
from same_defense.serving.deployment import ProtectedService

from .common import add_locustfile_argument, ensure_repository, exit_on_sigterm, load_test_data
from .loadtest import locust_command, run_locust, run_seconds
from .mix import LocustMix
from .soak import provision_keys
from .stats import ratio, read_locust_stats

HONEST = "benign"  # the locustfile's request name for honest users
ATTACKERS = ("attacker-synthetic", "attacker-proxy")
P99_GOAL = 2.0  # honest p99 under attack / without attackers, at most
RUNS = ("alone", "attacked", "alone_again")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    add_locustfile_argument(p)
    p.add_argument("--out", type=Path, default=Path("reports/under_attack"))
    p.add_argument("--report", type=Path, default=Path("reports/under_attack.json"))
    p.add_argument("--run-time", default="45s", help="Locust run time of each of the 3 runs")
    p.add_argument("--honest-users", type=int, default=8)
    p.add_argument("--attackers", type=int, default=2, help="attacker users of each kind")
    LocustMix.add_attack_arguments(p)
    p.add_argument("--log-file", type=Path, default=Path("logs/under-attack-tritonserver.log"))
    p.add_argument(
        "--gateway-option",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an AccountOptions field for the gateway (repeatable), e.g. suspected_rate=1",
    )
    args = p.parse_args(argv)
    args.processes = 0
    args.spawn_rate = 50.0  # every user at once: the runs are short
    return args


def _options(key_file: Path, pairs: list[str]) -> AccountOptions:
    options = AccountOptions(keys_file=key_file)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not hasattr(options, name):
            raise SystemExit(f"--gateway-option {pair!r}: expected FIELD=VALUE of AccountOptions")
        current = getattr(options, name)
        setattr(options, name, type(current)(value) if current is not None else float(value))
    return options


def warm_up(url: str, key: str, manifest: dict, requests: int = 100) -> None:
    """Requests of 1 and 16 images before the first run, so that no run pays the first
    executions of each model (memory growth, first kernel choices)."""
    import tritonclient.grpc as grpcclient

    images = load_test_data(manifest)["benign"]
    with grpcclient.InferenceServerClient(url) as client:
        for i in range(requests):
            batch = np.ascontiguousarray(images[i : i + (16 if i % 2 else 1)])
            tensor = grpcclient.InferInput("IMAGE", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            client.infer("same", [tensor], headers={"authorization": f"Bearer {key}"})


def _figures(stats: dict, name: str) -> dict | None:
    row = stats.get(name)
    if row is None:
        return None
    keep = ("requests", "failures", "p50_ms", "p95_ms", "p99_ms", "requests_per_s")
    return {k: row.get(k) for k in keep}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = ensure_repository(args.repository)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="same-under-attack-"))
    data_file = workdir / "data.npz"
    np.savez(data_file, **load_test_data(manifest))
    args.keys_file = workdir / "locust-keys.json"
    # one account per simulated user; attackers appear in one run only, so they start
    # unsuspected, and honest users keep their accounts from run to run
    key_file = provision_keys(
        workdir / "keys.json", args.keys_file, max(args.honest_users, args.attackers)
    )
    options = _options(key_file, args.gateway_option)
    service = ProtectedService(
        args.repository,
        public_port=free_port(),
        http_port=None,
        metrics_port=free_port(),
        log_file=args.log_file,
        accounts=options,
    )
    runs: dict = {}
    try:
        service.start()
        warm_up(service.public_url, KeyStore(key_file).add("warm-up"), manifest)
        for run in RUNS:
            attacked = run == "attacked"
            attackers = args.attackers if attacked else 0
            mix = LocustMix(
                benign_weight=args.honest_users,
                synthetic_weight=attackers,
                proxy_weight=attackers,
                attack_batch=args.attack_batch,
                attack_burst=args.attack_burst,
            )
            args.users = args.honest_users + 2 * attackers  # one user per weight unit
            command = locust_command(args, "same", service.public_url, data_file, mix)
            command[command.index("--csv") + 1] = str(args.out / run)
            command[command.index("--html") + 1] = str(args.out / f"{run}.html")
            print(f"== {run}: {args.users} users for {args.run_time}", flush=True)
            code = run_locust(command, args.out / f"{run}.log", run_seconds(args.run_time) + 120)
            stats = read_locust_stats(args.out / f"{run}_stats.csv")
            runs[run] = {
                "users": args.users,
                "honest": _figures(stats, HONEST),
                **{name: _figures(stats, name) for name in ATTACKERS if name in stats},
                "locust_exit_code": code,
            }
            print(f"   honest {runs[run]['honest']}", flush=True)
        accounts = service.gateway.accounts if service.gateway else None
        suspected = sorted(a for a, _ in accounts.suspected()) if accounts else []
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    alone, attacked = runs["alone"]["honest"], runs["attacked"]["honest"]
    p99 = ratio(attacked["p99_ms"], alone["p99_ms"])
    report = {
        "command": "python -m same_harness.load.under_attack " + " ".join(argv or []),
        "run_time_s": run_seconds(args.run_time),
        "gateway": {k: str(v) for k, v in vars(options).items() if k != "keys_file"},
        "runs": runs,
        "honest_p50_ratio": ratio(attacked["p50_ms"], alone["p50_ms"]),
        "honest_p99_ratio": p99,
        "honest_p99_ratio_vs_alone_again": ratio(
            attacked["p99_ms"], runs["alone_again"]["honest"]["p99_ms"]
        ),
        "honest_failures": sum(r["honest"]["failures"] or 0 for r in runs.values()),
        "accounts_suspected": suspected,
        "p99_goal": P99_GOAL,
        "p99_goal_met": p99 is not None and p99 <= P99_GOAL,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    print(f"== wrote {args.report}")
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    raise SystemExit(main())
