"""``make demo``: build (if needed), serve, query benign and attack-like sets, report.

Each caller has its own account (keys provisioned in a temporary key file): one honest user
sends the test split, and one thief per attack-like set sends that set. Everything the summary
says about per-query flags comes from the server's own Prometheus counters, what it says about
accounts from the gateway's account state; accuracies compare the answers clients received
with the true labels.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from same_defense.accounts import KeyStore
from same_defense.client import SameClient
from same_defense.core.manifest import is_built, read_manifest
from same_defense.data import splits_from_manifest
from same_defense.export.build import main as build_main
from same_defense.export.repository import refresh_defense_code
from same_defense.gateway.options import AccountOptions
from same_defense.serving.deployment import ProtectedService
from same_defense.serving.metrics import read_defense_counters
from same_harness.data.queries import QUERY_SOURCES, make_query_set


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--rebuild", action="store_true", help="train and export even if built")
    p.add_argument("--queries", type=int, default=500, help="queries per attack-like set")
    p.add_argument("--report", type=Path, default=Path("reports/demo.json"))
    p.add_argument("--log-file", type=Path, default=Path("logs/demo-tritonserver.log"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if args.rebuild or not is_built(args.repository):
        # --force: --rebuild asks to replace a built repository (same-build refuses otherwise).
        build_main(["--repository", str(args.repository), "--force"])
    else:
        refresh_defense_code(args.repository)
    timings["build_s"] = round(time.perf_counter() - start, 1)
    manifest = read_manifest(args.repository)
    splits = splits_from_manifest(manifest)
    shape = tuple(manifest["input_shape"])

    t = time.perf_counter()
    keys_dir = tempfile.TemporaryDirectory(prefix="same-demo-keys-")
    keys = KeyStore(Path(keys_dir.name) / "keys.json")
    callers = ["honest", *(f"thief-{source}" for source in DEMO_SOURCES)]
    key = {name: keys.add(name) for name in callers}
    # The default deployment: Triton on loopback behind the gateway that exposes only `same`
    # to callers with a key, with the account-level defense in the gateway's memory.
    service = ProtectedService.on_free_ports(
        args.repository, args.log_file, AccountOptions(keys_file=keys.path)
    )
    with keys_dir, service:
        timings["server_start_s"] = round(time.perf_counter() - t, 1)
        print(f"== serving `same` on {service.public_url} (log {args.log_file})", flush=True)
        t = time.perf_counter()
        victim_refused = public_victim_refused(service.public_url, shape, key["honest"])
        no_key_refused = unauthenticated_refused(service.public_url, shape)
        with SameClient(service.public_url, api_key=key["honest"]) as client:
            before = read_defense_counters(service.metrics_url)
            benign = client.classify(splits.test.images, batch_size=64)
            benign_counts = read_defense_counters(service.metrics_url) - before
        attack_rates, thieves = {}, {}
        for source in DEMO_SOURCES:
            queries = demo_queries(source, args.queries, shape)
            with SameClient(service.public_url, api_key=key[f"thief-{source}"]) as client:
                before = read_defense_counters(service.metrics_url)
                client.classify(queries, batch_size=16)
                counts = read_defense_counters(service.metrics_url) - before
            attack_rates[source] = round(counts.flag_rate, 4)
        accounts = service.gateway.accounts
        states = {name: accounts.store.get(name) for name in callers} if accounts else {}
        account_test = accounts.settings if accounts else None
        now = time.time()
        timings["queries_s"] = round(time.perf_counter() - t, 1)

    served_accuracy = float((benign.labels == splits.test.labels).mean())
    for name, state in states.items():
        thieves[name] = {
            "queries": state.queries,
            "suspected": state.suspected_at_query > 0,
            "suspected_after_queries": state.suspected_at_query or None,
            "strong_after_queries": state.strong_at_query or None,
            "tier": (state.tier(now, account_test) if account_test else "") or "normal",
            "exceedances": state.exceedances,
        }
    report = {
        "victim_test_accuracy": manifest["victim_test_accuracy"],
        "served_benign_accuracy": round(served_accuracy, 4),
        "benign_flag_rate": round(benign_counts.flag_rate, 4),
        "attack_flag_rate": attack_rates,
        "threshold": manifest["threshold"],
        "target_fpr": manifest["target_fpr"],
        "policy": read_policy(args.repository),
        "public_victim_call_refused": victim_refused,
        "call_without_key_refused": no_key_refused,
        "accounts": thieves,
        "account_response": account_response(account_test),
        "benign_queries": len(splits.test),
        "queries_per_attack_set": args.queries,
        "timings": timings,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    print(f"wrote {args.report}")
    return 0


# Attack-like query sets sent by one thief account each: the three foreign sources, and digits
# rendered from fonts (look-alike data, which SAME's reconstruction does not tell from MNIST).
DEMO_SOURCES = (*QUERY_SOURCES, "fonts")


def demo_queries(source: str, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """``n`` queries of a demo source (``fonts``: look-alike digits; else a query source)."""
    if source == "fonts":
        from .data.lookalike import lookalike_digits

        return lookalike_digits("fonts", n, shape, seed=1)[0]
    return make_query_set(source, n, shape, seed=1)


def account_response(settings) -> dict:
    """The graded response the gateway applies, in the settings' own numbers."""
    if settings is None:
        return {}
    return {
        "flagged_query_without_evidence": "top-1 label (no probabilities)",
        "alarm": "review: top-1 labels only" if settings.graded else "the response policy",
        "strong_evidence": (
            f"the response policy once the statistic reaches {settings.strong_factor:g} x h "
            f"({settings.strong_factor * settings.h:.1f}) with >= "
            f"{settings.strong_flag_share:.0%} of at least {settings.strong_min_queries} "
            "distinct queries flagged"
            + (
                f", and the victim unsure of the flagged ones (mean top-1 probability below "
                f"{settings.strong_max_confidence:g} by {settings.strong_confidence_z:g} "
                "standard errors) or at least "
                f"{settings.strong_lineage_share:.0%} of them a small step from an earlier "
                "query (lineage)"
                if settings.strong_patterns
                else ""
            )
            if settings.auto_strong
            else "the response policy after the operator confirms"
        ),
        "linked_accounts": (
            f"an account with fewer than {settings.young_queries} distinct queries (or its own "
            f"statistic above {settings.elevated_factor:g} x h) is answered at its network's "
            "or key group's tier"
        ),
        "drift": "alarms of many unrelated established accounts are held for the operator",
    }


def _refused(url: str, model: str, shape: tuple[int, ...], key: str | None, status: str) -> bool:
    with grpcclient.InferenceServerClient(url) as caller:
        image = grpcclient.InferInput("IMAGE", [1, *shape], "FP32")
        image.set_data_from_numpy(np.zeros((1, *shape), np.float32))
        headers = {"authorization": f"Bearer {key}"} if key else None
        try:
            caller.infer(model, [image], headers=headers)
        except InferenceServerException as exc:
            return status in str(exc.status())
    return False


def public_victim_refused(url: str, shape: tuple[int, ...], key: str) -> bool:
    """Does the public endpoint refuse a keyed call to the raw victim? (It must.)"""
    return _refused(url, "victim", shape, key, "PERMISSION_DENIED")


def unauthenticated_refused(url: str, shape: tuple[int, ...]) -> bool:
    """Does the public endpoint refuse `same` to a caller without a key? (It must.)"""
    return _refused(url, "same", shape, None, "UNAUTHENTICATED")


def read_policy(repository: Path) -> str:
    from same_defense.runtime.inprocess import defense_parameters

    return defense_parameters(repository)[0]


def print_summary(report: dict) -> None:
    print("\n== SAME demo summary")
    print(f"   policy served:            {report['policy']}")
    print(f"   victim test accuracy:     {report['victim_test_accuracy']:.4f}")
    print(f"   served benign accuracy:   {report['served_benign_accuracy']:.4f}")
    print(
        f"   benign flag rate:         {report['benign_flag_rate']:.4f} "
        f"(target FPR {report['target_fpr']})"
    )
    for source, rate in report["attack_flag_rate"].items():
        print(f"   flag rate {source:<14}  {rate:.4f}")
    print("   account response (graded):")
    for what, how in report.get("account_response", {}).items():
        print(f"     {what.replace('_', ' ')}: {how}")
    print("   accounts (account-level test on each caller's SAME scores):")
    for name, a in report["accounts"].items():
        verdict = (
            f"suspected after {a['suspected_after_queries']} distinct queries"
            if a["suspected"]
            else "not suspected"
        )
        if a.get("strong_after_queries"):
            verdict += f", strong evidence after {a['strong_after_queries']}"
        print(f"     {name:<20} {a['queries']:5d} queries, {verdict}; now {a.get('tier', '-')}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
