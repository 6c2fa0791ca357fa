"""``make demo``: build (if needed), serve, query benign and attack-like sets, report.

Everything the summary says about flags comes from the server's own Prometheus counters;
accuracies compare the answers clients received with the true labels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .client import SameClient
from .data import QUERY_SOURCES, load_dataset, make_query_set, split_dataset
from .export.build import main as build_main
from .export.repository import read_manifest, refresh_defense_code
from .gateway.deployment import ProtectedService
from .serving.embedded import free_port
from .serving.metrics import read_defense_counters


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
    manifest_path = args.repository / "defense" / "1" / "same_calibration.json"
    if args.rebuild or not manifest_path.exists():
        build_main(["--repository", str(args.repository)])
    else:
        refresh_defense_code(args.repository)
    timings["build_s"] = round(time.perf_counter() - start, 1)
    manifest = read_manifest(args.repository)
    splits = split_dataset(load_dataset(manifest["dataset"]), seed=manifest["seed"])
    shape = tuple(manifest["input_shape"])

    t = time.perf_counter()
    # The default deployment: Triton on loopback behind the gateway that exposes only `same`.
    service = ProtectedService(
        args.repository,
        public_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        log_file=args.log_file,
    )
    with service:
        timings["server_start_s"] = round(time.perf_counter() - t, 1)
        print(f"== serving `same` on {service.public_url} (log {args.log_file})", flush=True)
        t = time.perf_counter()
        with SameClient(service.public_url) as client:
            victim_refused = public_victim_refused(service.public_url, shape)
            before = read_defense_counters(service.metrics_url)
            benign = client.classify(splits.test.images, batch_size=64)
            benign_counts = read_defense_counters(service.metrics_url) - before
            attack_rates = {}
            for source in QUERY_SOURCES:
                queries = make_query_set(source, args.queries, shape, seed=1)
                before = read_defense_counters(service.metrics_url)
                client.classify(queries, batch_size=64)
                counts = read_defense_counters(service.metrics_url) - before
                attack_rates[source] = round(counts.flag_rate, 4)
        timings["queries_s"] = round(time.perf_counter() - t, 1)

    served_accuracy = float((benign.labels == splits.test.labels).mean())
    report = {
        "victim_test_accuracy": manifest["victim_test_accuracy"],
        "served_benign_accuracy": round(served_accuracy, 4),
        "benign_flag_rate": round(benign_counts.flag_rate, 4),
        "attack_flag_rate": attack_rates,
        "threshold": manifest["threshold"],
        "target_fpr": manifest["target_fpr"],
        "policy": read_policy(args.repository),
        "public_victim_call_refused": victim_refused,
        "benign_queries": len(splits.test),
        "queries_per_attack_set": args.queries,
        "timings": timings,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    print(f"wrote {args.report}")
    return 0


def public_victim_refused(url: str, shape: tuple[int, ...]) -> bool:
    """Does the public endpoint refuse a direct call to the raw victim? (It must.)"""
    with grpcclient.InferenceServerClient(url) as thief:
        image = grpcclient.InferInput("IMAGE", [1, *shape], "FP32")
        image.set_data_from_numpy(np.zeros((1, *shape), np.float32))
        try:
            thief.infer("victim", [image])
        except InferenceServerException as exc:
            return "PERMISSION_DENIED" in str(exc.status())
    return False


def read_policy(repository: Path) -> str:
    from .export.repository import read_model_config

    params = read_model_config(repository / "defense").parameters
    return params["policy"].string_value if "policy" in params else "misinformation"


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


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
