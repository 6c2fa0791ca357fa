"""``make evaluate``: every attack against every defense, both output types; detection tables,
the ablation of ``a``, the in-distribution (adaptive) attacker, and a check of the in-process
pipeline against the live gRPC endpoint. Writes ``reports/evaluation.{json,md}`` and plots.

    python -m same_harness.evaluation.run            # default: 4,000 queries per attack
    python -m same_harness.evaluation.run --quick    # smoke run (small budget, short training)

The sweep runs on :class:`~same_harness.attacks.InProcessOracle` (the repository's ONNX graphs
and the defense core, as the Triton step runs them); attacks are spread over ``--workers``
processes with one thread each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from ..attacks import OUTPUT_TYPES, CloneConfig
from .assemble import assemble
from .live_check import grpc_check
from .matrix import run_matrix
from .setup import (
    ATTACKS,
    EXTRA_ATTACKS,
    LOCAL_ATTACKS,
    Context,
    EvalConfig,
    context,
    default_attacks,
)

log = logging.getLogger("same.evaluation")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 300 queries, 2 epochs (20 steps min)"
    )
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--budget", type=int, help="queries per attack (default 4000; quick 300)")
    p.add_argument("--epochs", type=int, help="clone training epochs (default 2; quick 2)")
    p.add_argument("--clone-arch", choices=("cnn3", "resnet18"), help="default: the victim's")
    p.add_argument(
        "--attacks",
        nargs="+",
        choices=ATTACKS + EXTRA_ATTACKS + LOCAL_ATTACKS,
        help=f"default: {' '.join(ATTACKS)}, and knockoff-cifar100 when "
        "<transfer root>/cifar-100-python exists",
    )
    p.add_argument(
        "--transfer-root",
        help="folder with local transfer sets (cifar-100-python/); default: the root of the "
        "repository's data (as the build recorded it)",
    )
    p.add_argument(
        "--defenses",
        nargs="+",
        help="defenses to compare (default: all but the experimental same-misinfo-consistent "
        "and same-client-misinfo); none is always added",
    )
    p.add_argument("--outputs", nargs="+", choices=OUTPUT_TYPES, default=OUTPUT_TYPES)
    p.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    p.add_argument("--grpc-check", type=int, help="queries per set via live gRPC; 0 skips")
    p.add_argument("--no-indist", action="store_true", help="skip the in-distribution thief")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    from same_defense.core.manifest import read_manifest
    from same_defense.data import source_from_manifest

    transfer_root = args.transfer_root or source_from_manifest(read_manifest(args.repository)).root
    clone = CloneConfig(
        architecture=args.clone_arch,
        epochs=args.epochs or (2 if args.quick else CloneConfig.epochs),
        min_steps=20 if args.quick else 0,
        seed=args.seed,
    )
    return EvalConfig(
        repository=args.repository,
        out_dir=args.out_dir,
        budget=args.budget or (300 if args.quick else 4000),
        clone=clone,
        attacks=tuple(args.attacks or default_attacks(transfer_root)),
        transfer_root=transfer_root,
        defenses=tuple(args.defenses or ()),
        output_types=tuple(args.outputs),
        workers=args.workers,
        seed=args.seed,
        grpc_check=args.grpc_check if args.grpc_check is not None else (64 if args.quick else 256),
        indist=not args.no_indist,
        quick=args.quick,
    )


def live_check(ctx: Context) -> dict:
    """The live gRPC check, reported (not raised) when it fails: the sweep still runs."""
    log.info("== live gRPC check (embedded tritonserver)")
    try:
        check = grpc_check(ctx, Path("logs") / "evaluation-tritonserver.log")
    except Exception as exc:
        log.info(f"   gRPC check FAILED: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    log.info(
        f"   {check['queries_total']} queries live vs in-process: max |dp| "
        f"{check['max_abs_prob_diff']:.2e}, label agreement {check['min_label_agreement']:.4f}"
    )
    return check


def main(argv: list[str] | None = None) -> int:
    from .defenses import DEFENSE_NAMES, EXPERIMENTAL_DEFENSES
    from .plots import write_plots
    from .report import write_markdown

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = config_from_args(args)
    known = DEFENSE_NAMES + EXPERIMENTAL_DEFENSES
    unknown = set(config.defenses) - set(known)
    if unknown:
        raise SystemExit(f"unknown defenses {sorted(unknown)}; choose from {', '.join(known)}")
    if config.defenses and "none" not in config.defenses:
        config = replace(config, defenses=("none", *config.defenses))
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    log.info(
        f"== evaluation: budget {config.budget} queries per attack, attacks "
        f"{', '.join(config.attacks)}, {config.workers} worker(s)"
    )
    ctx = context(config)
    check: dict = {"skipped": True}
    if config.grpc_check > 0:
        t = time.perf_counter()
        check = live_check(ctx)
        timings["grpc_check_s"] = round(time.perf_counter() - t, 1)
    log.info("== attack x defense x output sweep (in-process oracle)")
    t = time.perf_counter()
    results = run_matrix(config)
    timings["sweep_s"] = round(time.perf_counter() - t, 1)
    timings.update(
        {
            "task_" + "_".join(filter(None, (r["attack"], r.get("output")))) + "_s": r["time_s"]
            for r in results
        }
    )
    report, arrays = assemble(ctx, results)
    report["grpc_check"] = check
    t = time.perf_counter()
    plots = write_plots(report, arrays, out_dir)
    timings["plots_s"] = round(time.perf_counter() - t, 1)
    timings["total_s"] = round(time.perf_counter() - start, 1)
    report["timings"] = timings
    report["plots"] = [str(p) for p in plots]
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out_dir / "evaluation.md")
    log.info(
        f"== wrote {out_dir / 'evaluation.json'}, {out_dir / 'evaluation.md'} and "
        f"{len(plots)} plots in {timings['total_s']:.0f}s"
    )
    for g in report["goals"]:
        log.info(f"   {'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
