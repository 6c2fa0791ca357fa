"""Offline evaluation of the account-level defense: what spreading queries over accounts buys
a thief, and what the account test costs honest users. Writes ``accounts.json``,
``accounts.md`` and ``accounts_clone_vs_accounts.png``.

    python -m same_defense.evaluation.accounts            # 4,000 queries, 3 seeds for k = 1
    python -m same_defense.evaluation.accounts --quick    # smoke run (small budget, 1 seed)

Each thief runs against :class:`~.account_population.AccountOracle` with its batches spread
over ``k`` accounts, and once undefended (``monitor``, no account layer): the reference its
drop is measured from. Attacks, clone training and the memoised graphs are those of
``make evaluate`` (:mod:`.run`), except that clones train for 2 epochs instead of 3 by default
(``--epochs 3`` for the same training) so that the 70 runs fit about 12 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..attacks import OUTPUT_TYPES, CloneConfig, clone_architecture
from .accounts_report import write_markdown, write_plot
from .setup import ATTACKS, EvalConfig, context, make_attack

ACCOUNT_COUNTS = (1, 10, 40, 100)
QUICK_ATTACKS = ("knockoff-digits8x8", "noise")
# run.py trains clones for 3 epochs. Measured on 2 cores: 3 epochs with the undefended reference
# on every seed took about 2,100 CPU-seconds (17 minutes); 2 epochs and one undefended seed take
# about 1,280 (11 minutes). The thief is weaker for it (knockoff-digits8x8: 67 % instead of 78 %).
DEFAULT_EPOCHS = 2
# Seconds per run measured on the default build (1 thread): the longest runs start first.
COST = {"jbda": 40, "knockoff-digits8x8": 22, "knockoff-natural": 16, "noise": 16, "dfme": 14}
log = logging.getLogger("same.evaluation.accounts")


@dataclass(frozen=True)
class AccountEvalConfig:
    repository: str = "model_repository"
    out_dir: str = "reports"
    budget: int = 4000
    seeds: tuple[int, ...] = (0, 1, 2)  # every seed for k = 1; the first elsewhere
    account_counts: tuple[int, ...] = ACCOUNT_COUNTS
    attacks: tuple[str, ...] = ATTACKS
    outputs: tuple[str, ...] = OUTPUT_TYPES
    honest_accounts: int = 1000
    honest_queries: int = 1000
    clone: CloneConfig = field(default_factory=lambda: CloneConfig(epochs=DEFAULT_EPOCHS))
    workers: int = 2
    quick: bool = False

    def eval_config(self) -> EvalConfig:
        """The :mod:`.run` configuration whose context (data, graphs, trainer) is reused."""
        return EvalConfig(
            repository=self.repository,
            out_dir=self.out_dir,
            budget=self.budget,
            clone=self.clone,
            attacks=self.attacks,
            output_types=self.outputs,
            seed=self.seeds[0],
            grpc_check=0,
            indist=False,
            curves=False,
            quick=self.quick,
        )

    def runs(self) -> list[tuple[str, str, int, int]]:
        """``(attack, output, accounts, seed)``, accounts 0 = undefended; longest first. Only
        the one-account runs repeat over seeds: they carry the goals, and their spread is
        what a single seed would hide (the undefended clone varied by about 1 point)."""
        runs = [
            (a, o, k, s)
            for a in self.attacks
            for o in self.outputs
            for k in (0, *self.account_counts)
            for s in (self.seeds if k == 1 else self.seeds[:1])
        ]
        return sorted(runs, key=lambda r: -COST.get(r[0], 20))


_PIPELINES: dict = {}  # per process: the served pipeline, built once


def pipeline_for(repository: str):
    from ..serving.inprocess import InProcessSame

    if repository not in _PIPELINES:
        _PIPELINES[repository] = InProcessSame(Path(repository), threads=1)
    return _PIPELINES[repository]


def run_one(config: AccountEvalConfig, attack: str, output: str, accounts: int, seed: int) -> dict:
    """One thief; ``accounts`` = 0 is the undefended reference, else the account layer."""
    from ..attacks import CloneTrainer, InProcessOracle, LabelOnly
    from .account_population import AccountOracle, account_service
    from .defenses import DefendedPipeline

    start = time.perf_counter()
    logging.getLogger("same.accounts").setLevel(logging.ERROR)  # not one line per alarm
    ctx = context(config.eval_config())
    pipeline = pipeline_for(config.repository)
    thief = make_attack(attack, ctx, seed=seed)
    arch = clone_architecture(ctx.manifest)
    trainer = CloneTrainer(ctx.shape, ctx.num_classes, arch, replace(config.clone, seed=seed))
    if accounts == 0:  # same-monitor answers exactly what the undefended victim does
        monitor = DefendedPipeline(ctx.graphs, ctx.defenses["same-monitor"])
        oracle = InProcessOracle(monitor, config.budget)
    else:
        service = account_service(pipeline.manifest)
        oracle = AccountOracle(pipeline, service, accounts, config.budget, graphs=ctx.graphs)
    result = thief.run(LabelOnly(oracle) if output == "labels" else oracle, trainer, output)
    record = {"attack": attack, "output": output, "accounts": accounts, "seed": seed}
    record |= {"queries_used": result.queries_used}
    record |= ctx.clone_metrics(result.clone)
    if accounts:
        record |= oracle.summary()
    return record | {"time_s": round(time.perf_counter() - start, 1)}


def describe(r: dict) -> str:
    who = f"{r['accounts']:>3} accounts" if r["accounts"] else "undefended  "
    extra = (
        ""
        if not r["accounts"]
        else (
            f" suspected {r['accounts_suspected']}/{r['accounts']} delay {r['detection_delay']} "
            f"forced {r['forced_share']:.3f}"
        )
    )
    return (
        f"[{r['attack']}] {r['output']:<6} {who} seed {r['seed']}: clone acc "
        f"{r['clone_accuracy']:.3f} fidelity {r['clone_fidelity']:.3f}{extra} ({r['time_s']:.0f}s)"
    )


def run_attacks(config: AccountEvalConfig) -> list[dict]:
    """Every run, in ``config.workers`` spawned processes (one thread each) or in this one."""
    runs, records = config.runs(), []
    if config.workers <= 1:
        for run in runs:
            records.append(run_one(config, *run))
            log.info("%s (%d/%d)", describe(records[-1]), len(records), len(runs))
        return records
    import multiprocessing as mp

    from .matrix import exit_with_parent

    with ProcessPoolExecutor(
        config.workers,
        mp_context=mp.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        for future in as_completed([pool.submit(run_one, config, *r) for r in runs]):
            records.append(future.result())
            log.info("%s (%d/%d)", describe(records[-1]), len(records), len(runs))
    return records


def evaluate(config: AccountEvalConfig) -> dict:
    """The whole evaluation; writes the three files and returns the JSON report."""
    from .account_population import account_service, goals, summarise
    from .honest_population import run_honest_population

    start, timings = time.perf_counter(), {}
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = context(config.eval_config())
    pipeline = pipeline_for(config.repository)
    service = account_service(pipeline.manifest)  # raises if the build wrote no references
    test = ctx.splits.test
    honest = run_honest_population(
        pipeline.settings,
        service,
        ctx.benign,
        test.images,
        test.labels,
        config.honest_accounts,
        config.honest_queries,
        seed=config.seeds[0],
    )
    timings["honest_s"] = round(time.perf_counter() - start, 1)
    o = honest["overall"]
    log.info(
        "honest: %d/%d accounts suspected, %.3f points lost (%.0fs)",
        o["suspected"],
        o["accounts"],
        o["accuracy_lost_points"],
        timings["honest_s"],
    )
    t = time.perf_counter()
    records = sorted(
        run_attacks(config), key=lambda r: (r["attack"], r["output"], r["accounts"], r["seed"])
    )
    timings["attacks_s"] = round(time.perf_counter() - t, 1)
    one_account = summarise(records)
    report = {
        "schema_version": 1,
        "settings": {k: v for k, v in asdict(config).items() if k != "clone"}
        | {
            "clone": asdict(config.clone),
            "account_test": service.settings.to_dict(),
            "policy": pipeline.settings.policy,
            "threshold": pipeline.settings.threshold,
            "dataset": ctx.manifest["dataset"],
            "n_test": len(test),
            "victim_test_accuracy": ctx.manifest.get("victim_test_accuracy"),
        },
        "honest": honest,
        "attacks": records,
        "one_account": one_account,
        "goals": goals(one_account, honest),
        "timings": timings,
    }
    write_plot(report, out / "accounts_clone_vs_accounts.png")
    timings["total_s"] = round(time.perf_counter() - start, 1)
    (out / "accounts.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "accounts.md")
    return report


def parse_args(argv: list[str] | None) -> AccountEvalConfig:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--out", default="reports", help="folder for the report files")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: budget 320, 1 seed, k in 1 10, two attacks, 200 honest",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (quick: 0)")
    p.add_argument("--honest-accounts", type=int, help="default 1000 (quick: 200)")
    p.add_argument("--honest-queries", type=int, default=1000, help="queries per honest account")
    p.add_argument("--budget", type=int, help="queries per thief (default 4000; quick 320)")
    p.add_argument("--accounts", type=int, nargs="+", help="k values (default 1 10 40 100)")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS)
    p.add_argument("--outputs", nargs="+", choices=OUTPUT_TYPES, default=OUTPUT_TYPES)
    p.add_argument("--epochs", type=int, help=f"clone epochs (default {DEFAULT_EPOCHS})")
    p.add_argument("--workers", type=int, help="processes, one thread each (default 2; quick 1)")
    a = p.parse_args(argv)
    q = a.quick
    seeds = tuple(a.seeds or ((0,) if q else (0, 1, 2)))
    return AccountEvalConfig(
        repository=a.repository,
        out_dir=a.out,
        budget=a.budget or (320 if q else 4000),
        seeds=seeds[:1] if q else seeds,
        account_counts=tuple(a.accounts or ((1, 10) if q else ACCOUNT_COUNTS)),
        attacks=tuple(a.attacks or (QUICK_ATTACKS if q else ATTACKS)),
        outputs=tuple(a.outputs),
        honest_accounts=a.honest_accounts or (200 if q else 1000),
        honest_queries=a.honest_queries,
        workers=a.workers or (1 if q else 2),
        quick=q,
        clone=CloneConfig(
            epochs=a.epochs or DEFAULT_EPOCHS, min_steps=20 if q else 0, seed=seeds[0]
        ),
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("same.accounts").setLevel(logging.ERROR)  # the per-run line says it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = evaluate(config)
    out = Path(config.out_dir)
    log.info(
        "wrote %s, accounts.md and accounts_clone_vs_accounts.png in %.0fs",
        out / "accounts.json",
        report["timings"]["total_s"],
    )
    for g in report["goals"]:
        log.info("  %s %s: %s", "MET " if g["met"] else "MISS", g["goal"], g["measured"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
