"""Offline evaluation of the account-level defense against thieves who adapt, and of what it
costs honest users whose data drift. Writes ``accounts.json``, ``accounts.md`` and plots.

    python -m same_harness.evaluation.accounts            # the full sweep (about 30 min)
    python -m same_harness.evaluation.accounts --quick    # smoke run (minutes)

Thieves (:class:`ThiefCase`): KnockoffNets on look-alike digits (rendered from fonts), on the
8x8 digits, and JBDA, with probabilities and with labels, one image per request (and 8): on
one account (three seeds), over 10 to 400 accounts that are unrelated, on one network or in
one key group, and diluting each foreign query with R perturbed copies of P real images it
holds (``pool``, a split no model saw). Each runs once undefended (policy ``monitor``, no
account layer): the reference. The **own-data clones** (:func:`own_data_clone`) are what the
thief has without a query: the pool's real images and, where its source comes labelled (the
digits it rendered, the 8x8 set, JBDA's seeds), those with their labels. The **pool-only
clone** is the floor of the issue's dilution goal; the service is also judged by what its
answers add to the thief's own labels. The **cost to steal** is the number of unrelated
accounts a thief needs to keep its clone within 10 points of the undefended one.

Honest users (:mod:`.honest_population`): 10,000 accounts of every behaviour, and shifted
users (blur, pens, contrast, rotation, noise, JPEG, scanners) at several strengths.
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

import numpy as np

from ..attacks import OUTPUT_TYPES, CloneConfig, clone_architecture
from .setup import EvalConfig, context, make_attack

GOAL_ATTACKS = ("knockoff-fonts", "knockoff-digits8x8", "jbda")
EXTRA_THIEVES = (
    "knockoff-strokes",
    "knockoff-natural",
    "knockoff-fonts-blur",
    "knockoff-unlabelled",
)
ACCOUNT_COUNTS = (1, 10, 50, 200, 400)
LINKED_COUNTS = (10, 50, 400)  # one network / one group: fewer points, the claim is "every k"
DILUTIONS = ((200, 1), (200, 2), (200, 4), (50, 2))  # (pool P, copies R per foreign query)
QUICK_SHIFTS = ("blur@1", "brighter@0.1", "thicker-pen@2")
DEFAULT_EPOCHS = 2  # as before: 3 epochs cost 1.6x the time for a stronger thief (docs)
log = logging.getLogger("same.evaluation.accounts")


@dataclass(frozen=True)
class ThiefCase:
    attack: str
    output: str
    accounts: int  # 0: undefended reference
    links: str = "unrelated"
    request_size: int | None = 1
    pool: int = 0  # real images held (dilution)
    ratio: int = 0  # copies per foreign query (dilution)
    seed: int = 0
    response: str = "graded"  # see account_population.RESPONSES
    spread: str = "round-robin"  # see account_population.SPREADS

    @property
    def cost(self) -> float:
        """Rough seconds, to start the longest first."""
        base = 40 if self.attack == "jbda" else 20
        return base * (1 + self.ratio) + self.accounts / 40


@dataclass(frozen=True)
class AccountEvalConfig:
    repository: str = "model_repository"
    out_dir: str = "reports"
    budget: int = 4000
    seeds: tuple[int, ...] = (0, 1, 2)  # every seed for one account; the first elsewhere
    attacks: tuple[str, ...] = GOAL_ATTACKS
    extra_thieves: tuple[str, ...] = EXTRA_THIEVES
    outputs: tuple[str, ...] = OUTPUT_TYPES
    account_counts: tuple[int, ...] = ACCOUNT_COUNTS
    linked_counts: tuple[int, ...] = LINKED_COUNTS
    dilutions: tuple[tuple[int, int], ...] = DILUTIONS
    honest_accounts: int = 10_000
    honest_queries: int = 300
    shifted_accounts: int = 10
    shifts: tuple[str, ...] = ()  # empty: every kind@strength of data.shifts
    heavy_queries: int = 10_000
    # An earlier accounts.json whose thief runs (the 45-minute part) are taken as they are
    # (cases it lacks run now); the honest and shifted parts are measured again. Same
    # repository and settings only.
    reuse_thieves: str | None = None
    responses: tuple[str, ...] = ("graded", "review-only", "legacy")
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

    def cases(self) -> list[ThiefCase]:
        """Every thief run, longest first."""
        s0 = self.seeds[0]
        cases: list[ThiefCase] = []
        for a in self.attacks:
            for o in self.outputs:
                cases += [ThiefCase(a, o, 0, seed=s) for s in self.seeds]
                cases += [ThiefCase(a, o, 1, seed=s) for s in self.seeds]
                cases.append(ThiefCase(a, o, 1, request_size=8, seed=s0))
                cases += [ThiefCase(a, o, k, seed=s0) for k in self.account_counts if k > 1]
                cases += [
                    ThiefCase(a, o, k, links=mode, seed=s0)
                    for mode in ("one-network", "one-group")
                    for k in self.linked_counts
                ]
                if a.startswith("knockoff"):
                    cases += [
                        ThiefCase(a, o, 1, pool=p, ratio=r, seed=s0) for p, r in self.dilutions
                    ]
                if a == "jbda":  # lineage is per account: the thief keeps parents apart
                    shuffled = {2, *(k for k in self.account_counts if 1 < k <= 50)}
                    cases += [
                        ThiefCase(a, o, k, seed=s0, spread="shuffled") for k in sorted(shuffled)
                    ]
                cases += [
                    ThiefCase(a, o, k, seed=s0, response=r)
                    for r in self.responses
                    if r != "graded"
                    for k in (1, 50)
                ]
        for a in self.extra_thieves:
            cases += [ThiefCase(a, o, k, seed=s0) for o in self.outputs for k in (0, 1)]
        return sorted(cases, key=lambda c: -c.cost)


_PIPELINES: dict = {}  # per process: the served pipeline, built once


def pipeline_for(repository: str):
    from same_defense.runtime.inprocess import InProcessSame

    if repository not in _PIPELINES:
        _PIPELINES[repository] = InProcessSame(Path(repository), threads=1)
    return _PIPELINES[repository]


def thief_pool(ctx, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` real images of the pool split (class-balanced) and their labels: the
    diluting thief's own data."""
    pool = ctx.splits.pool
    if pool is None or len(pool) == 0:
        raise ValueError("this repository has no pool split: rebuild it (same-build)")
    rng = np.random.default_rng(seed)
    per_class = -(-size // ctx.num_classes)
    index = np.concatenate(
        [
            rng.permutation(np.flatnonzero(pool.labels == c))[:per_class]
            for c in range(ctx.num_classes)
        ]
    )
    index = np.sort(index)[:size]
    return pool.images[index], pool.labels[index]


def holds_own_labels(attack: str) -> bool:
    """Whether the thief of ``attack`` holds data whose labels it knows without asking: the
    digits it rendered or drew, the labelled 8x8 set, JBDA's seed digits (not photo crops,
    noise or generators)."""
    from ..attacks import LABELLED_SOURCES

    return attack == "jbda" or attack.removeprefix("knockoff-") in LABELLED_SOURCES


def own_labelled_data(ctx, attack: str, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """What the thief of ``attack`` holds with those labels (None: :func:`holds_own_labels`
    is False)."""
    if not holds_own_labels(attack):
        return None
    if attack == "jbda":
        return ctx.jbda_seed_set()
    thief = make_attack(attack, ctx, seed=seed)  # its whole transfer set is queried
    return thief.pool, thief.groups


def run_one(config: AccountEvalConfig, case: ThiefCase) -> dict:
    """One thief; ``accounts`` = 0 is the undefended reference, else the account layer."""
    from ..attacks import CloneTrainer, InProcessOracle, LabelOnly
    from .account_population import (
        AccountOracle,
        Dilution,
        account_service,
        response_settings,
    )
    from .defenses import DefendedPipeline

    start = time.perf_counter()
    logging.getLogger("same.accounts").setLevel(logging.ERROR)  # not one line per alarm
    ctx = context(config.eval_config())
    pipeline = pipeline_for(config.repository)
    thief = make_attack(case.attack, ctx, seed=case.seed)
    arch = clone_architecture(ctx.manifest)
    trainer = CloneTrainer(ctx.shape, ctx.num_classes, arch, replace(config.clone, seed=case.seed))
    if case.accounts == 0:  # same-monitor answers exactly what the undefended victim does
        monitor = DefendedPipeline(ctx.graphs, ctx.defenses["same-monitor"])
        oracle = InProcessOracle(monitor, config.budget)
    else:
        dilution = (
            Dilution(thief_pool(ctx, case.pool, case.seed)[0], case.ratio, case.seed)
            if case.ratio
            else None
        )
        oracle = AccountOracle(
            pipeline,
            account_service(pipeline.manifest, response=case.response),
            case.accounts,
            config.budget,
            graphs=ctx.graphs,
            request_size=case.request_size,
            links=case.links,
            dilution=dilution,
            settings=response_settings(pipeline.settings, case.response),
            spread=case.spread,
            seed=case.seed,
        )
    result = thief.run(
        LabelOnly(oracle) if case.output == "labels" else oracle, trainer, case.output
    )
    clone = result.clone
    if case.ratio:  # the thief trains on everything it got answers for, copies included
        images, answer = oracle.transcript()
        clone = trainer.fit_answers(images, answer, case.output)
    record = asdict(case) | {"queries_used": result.queries_used}
    record |= ctx.clone_metrics(clone)
    if case.accounts:
        record |= oracle.summary()
    return record | {"time_s": round(time.perf_counter() - start, 1)}


def own_data_clone(config: AccountEvalConfig, attack: str | None, seed: int, pool: int) -> dict:
    """The clone a thief trains on its own data with the labels it knows, no query at all:
    ``pool`` real images (as the perturbed copies a diluting thief sends, two per foreign
    query) and, unless ``attack`` is None, the labelled data of that attack. What the
    service's answers add is judged against it: the service cannot take that away."""
    from ..attacks import CloneTrainer
    from ..attacks.oracle import Answer
    from ..data.shifts import photo_copies

    ctx = context(config.eval_config())
    images, labels = [], []
    if pool:
        real, real_labels = thief_pool(ctx, pool, seed)
        copies = max(1, config.budget * 2 // pool)
        images.append(photo_copies(real, copies, seed))
        labels.append(np.repeat(real_labels, copies))
    held = own_labelled_data(ctx, attack, seed) if attack else None
    if held is not None:
        images.append(held[0])
        labels.append(held[1])
    if not images:
        raise ValueError(f"{attack}: holds no labelled data")
    x, y = np.concatenate(images), np.concatenate(labels)
    trainer = CloneTrainer(
        ctx.shape,
        ctx.num_classes,
        clone_architecture(ctx.manifest),
        replace(config.clone, seed=seed),
    )
    onehot = np.eye(ctx.num_classes, dtype=np.float32)[y]
    # A small set (JBDA's 150 seeds) gets as many optimiser steps as a full query set would.
    full_steps = config.clone.epochs * -(-config.budget // config.clone.batch_size)
    clone = trainer.fit_answers(x, Answer(onehot, y), "labels", min_steps=full_steps)
    return {"attack": attack, "seed": seed, "pool": pool, "images": int(len(x))} | (
        ctx.clone_metrics(clone)
    )


def own_data_jobs(config: AccountEvalConfig) -> list[tuple[str | None, int, int]]:
    """``(attack, seed, pool)`` of every own-data clone the report compares against: the
    pool alone per P (the pool-only floor), each labelled thief per seed it runs, and each
    diluting thief's pool with its labelled data."""
    s0 = config.seeds[0]
    pools = sorted({p for p, _ in config.dilutions})
    jobs: list[tuple[str | None, int, int]] = [(None, s0, p) for p in pools]
    for a in (*config.attacks, *config.extra_thieves):
        if not holds_own_labels(a):
            continue
        seeds = config.seeds if a in config.attacks else (s0,)
        jobs += [(a, s, 0) for s in seeds]
        if a.startswith("knockoff") and a in config.attacks:
            jobs += [(a, s0, p) for p in pools]
    return jobs


def own_data_clones(config: AccountEvalConfig, done: list[dict] | None = None) -> list[dict]:
    """Every own-data clone of :func:`own_data_jobs` not among ``done`` (an earlier report's)."""
    done = done or []
    known = {(r["attack"], r["seed"], r["pool"]) for r in done}
    jobs = [j for j in own_data_jobs(config) if j not in known]
    return done + in_workers(config, own_data_clone, jobs, describe_own)


def describe_own(r: dict) -> str:
    held = r["attack"] or "pool only"
    pool = f", pool P{r['pool']}" if r["pool"] else ""
    return f"[own data] {held}{pool} seed {r['seed']}: clone acc {r['clone_accuracy']:.3f}"


def pool_only_floors(own: list[dict]) -> dict[str, dict]:
    """The pool-only clone per P, as reports before the own-data clones stored it."""
    return {str(r["pool"]): r for r in own if r["attack"] is None and r["pool"]}


def describe(r: dict) -> str:
    who = (
        f"{r['accounts']:>3} accounts ({r['links']}, {r['request_size']}/request"
        + (f", dilution P{r['pool']} R{r['ratio']}" if r["ratio"] else "")
        + ")"
        if r["accounts"]
        else "undefended"
    ) + ("" if r.get("response", "graded") == "graded" else f" [{r['response']}]")
    extra = (
        f" suspected {r['accounts_suspected']}/{r['accounts']} delay {r['detection_delay']} "
        f"misinformed {r['misinformed_share']:.2f}"
        if r["accounts"]
        else ""
    )
    return (
        f"[{r['attack']}] {r['output']:<6} {who} seed {r['seed']}: clone acc "
        f"{r['clone_accuracy']:.3f}{extra} ({r['time_s']:.0f}s)"
    )


def case_key(record: dict) -> tuple:
    """A run's case, from a record (fields added since an earlier report take defaults)."""
    defaults = asdict(ThiefCase("", "", 0))
    return tuple(record.get(name, default) for name, default in defaults.items())


def in_workers(config: AccountEvalConfig, job, args: list, describe_result=None) -> list:
    """``job(config, *a)`` for every ``a`` in ``args``, in ``config.workers`` spawned processes
    (one thread each) or in this one; results in the order they finish, each logged."""
    results: list = []
    if not args:
        return results

    def finished(result) -> None:
        results.append(result)
        what = describe_result(result) if describe_result else repr(result)
        log.info("%s (%d/%d)", what, len(results), len(args))

    if config.workers <= 1:
        for a in args:
            finished(job(config, *a))
        return results
    import multiprocessing as mp

    from .matrix import exit_with_parent

    with ProcessPoolExecutor(
        config.workers,
        mp_context=mp.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        for future in as_completed([pool.submit(job, config, *a) for a in args]):
            finished(future.result())
    return results


def run_thieves(config: AccountEvalConfig, done: list[dict] | None = None) -> list[dict]:
    """Every case not among ``done`` (earlier records, kept as they are)."""
    done = done or []
    known = {case_key(r) for r in done}
    cases = [(c,) for c in config.cases() if case_key(asdict(c)) not in known]
    return list(done) + in_workers(config, run_one, cases, describe)


def honest_sets(ctx, settings, config: AccountEvalConfig) -> tuple[dict, dict]:
    """The honest image sets answered at every tier (the clean test split, the perturbed
    photos of a few digits, the heavy users' set), and each shift of the test split as graph
    outputs, images and labels (answered per response compared)."""
    from ..data.shifts import apply_shift, photo_copies, shift_names
    from .honest_population import FEW_BASES, FEW_COPIES, answer_set

    test = ctx.splits.test

    def answered(images: np.ndarray, labels: np.ndarray):
        return answer_set(ctx.graphs.run(images), images, labels, settings)

    bases = np.random.default_rng(11).choice(len(test), min(FEW_BASES, len(test)), replace=False)
    few = photo_copies(test.images[bases], FEW_COPIES, seed=11)
    heavy_copies = -(-config.heavy_queries // len(test))
    heavy = photo_copies(test.images, heavy_copies, seed=12)
    behaviours = {
        "test": answer_set(ctx.benign, test.images, test.labels, settings),
        "perturbed-few": answered(few, np.repeat(test.labels[bases], FEW_COPIES)),
        "heavy": answered(heavy, np.repeat(test.labels, heavy_copies)),
    }
    shifted = {}
    for name in config.shifts or shift_names():
        images = apply_shift(name, test.images, seed=13)
        shifted[name] = (ctx.graphs.run(images), images, test.labels)
    return behaviours, shifted


def evaluate(config: AccountEvalConfig) -> dict:
    """The whole evaluation; writes the report files and returns the JSON report."""
    from .account_population import account_service, response_settings
    from .accounts_report import goals, summarise, write_markdown, write_plots
    from .honest_population import answer_set, run_behaviours, run_shifted

    start, timings = time.perf_counter(), {}
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = context(config.eval_config())
    pipeline = pipeline_for(config.repository)
    service = account_service(pipeline.manifest)  # raises if the build wrote no references
    behaviours, shifted = honest_sets(ctx, pipeline.settings, config)
    timings["honest_sets_s"] = round(time.perf_counter() - start, 1)
    t = time.perf_counter()
    honest = run_behaviours(
        lambda: account_service(pipeline.manifest),
        behaviours,
        config.honest_accounts,
        config.honest_queries,
        seed=config.seeds[0],
    )
    timings["honest_s"] = round(time.perf_counter() - t, 1)
    o = honest["overall"]
    log.info(
        "honest: %d/%d accounts suspected, %.3f points lost (%.0fs)",
        o["suspected"],
        o["accounts"],
        o["accuracy_lost_points"],
        timings["honest_s"],
    )
    t = time.perf_counter()
    shifted_rows = {
        response: run_shifted(
            lambda r=response: account_service(pipeline.manifest, response=r),
            {
                name: answer_set(*raw, response_settings(pipeline.settings, response))
                for name, raw in shifted.items()
            },
            behaviours["test"],
            config.shifted_accounts,
            seed=config.seeds[0],
        )
        for response in config.responses
    }
    timings["shifted_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    earlier = json.loads(Path(config.reuse_thieves).read_text()) if config.reuse_thieves else None
    now_settings = json.loads(json.dumps(service.settings.to_dict()))  # tuples as lists
    if earlier is not None and earlier["settings"]["account_test"] != now_settings:
        raise ValueError(f"{config.reuse_thieves}: its thieves met other account-test settings")
    # Earlier runs are kept; cases the earlier report lacks (a case added since) run now.
    records = sorted(
        run_thieves(config, earlier["thieves"] if earlier else None),
        key=lambda r: (
            r["attack"],
            r["output"],
            r["response"],
            r["links"],
            r["accounts"],
            r["ratio"],
            r["seed"],
        ),
    )
    timings["thieves_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    own = own_data_clones(config, earlier.get("own_data") if earlier else None)
    timings["own_data_s"] = round(time.perf_counter() - t, 1)
    summary = summarise(records, own)
    report = {
        "schema_version": 2,
        "settings": {k: v for k, v in asdict(config).items() if k != "clone"}
        | {
            "clone": asdict(config.clone),
            "account_test": service.settings.to_dict(),
            "policy": pipeline.settings.policy,
            "threshold": pipeline.settings.threshold,
            "dataset": ctx.manifest["dataset"],
            "n_test": len(ctx.splits.test),
            "victim_test_accuracy": ctx.manifest.get("victim_test_accuracy"),
        },
        "honest": honest,
        "shifted": shifted_rows,
        "thieves": records,
        "own_data": own,
        "pool_only": pool_only_floors(own),
        "summary": summary,
        "goals": goals(summary, honest, shifted_rows),
        "timings": timings,
    }
    write_plots(report, out)
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
        help="smoke run: budget 400, 1 seed, k in 1 10 50, one attack, 500 honest accounts",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (quick: 0)")
    p.add_argument("--honest-accounts", type=int, help="default 10000 (quick: 500)")
    p.add_argument("--honest-queries", type=int, default=300, help="queries per honest account")
    p.add_argument("--budget", type=int, help="foreign queries per thief (default 4000)")
    p.add_argument("--accounts", type=int, nargs="+", help="k values (default 1 10 50 200 400)")
    p.add_argument("--attacks", nargs="+", help=f"default {' '.join(GOAL_ATTACKS)}")
    p.add_argument("--outputs", nargs="+", choices=OUTPUT_TYPES, default=OUTPUT_TYPES)
    p.add_argument("--epochs", type=int, help=f"clone epochs (default {DEFAULT_EPOCHS})")
    p.add_argument("--workers", type=int, help="processes, one thread each (default 2; quick 1)")
    p.add_argument(
        "--reuse-thieves",
        metavar="JSON",
        help="keep the thief runs of an earlier accounts.json (same repository and test "
        "settings), run only the cases it lacks, and measure the honest and shifted users again",
    )
    a = p.parse_args(argv)
    q = a.quick
    seeds = tuple(a.seeds or ((0,) if q else (0, 1, 2)))
    return AccountEvalConfig(
        repository=a.repository,
        out_dir=a.out,
        budget=a.budget or (400 if q else 4000),
        seeds=seeds,
        attacks=tuple(a.attacks or (("knockoff-fonts",) if q else GOAL_ATTACKS)),
        extra_thieves=() if q else EXTRA_THIEVES,
        outputs=tuple(a.outputs),
        account_counts=tuple(a.accounts or ((1, 10, 50) if q else ACCOUNT_COUNTS)),
        linked_counts=(10,) if q else LINKED_COUNTS,
        dilutions=((50, 2),) if q else DILUTIONS,
        honest_accounts=a.honest_accounts or (500 if q else 10_000),
        honest_queries=a.honest_queries,
        shifted_accounts=5 if q else 10,
        shifts=QUICK_SHIFTS if q else (),
        heavy_queries=1000 if q else 10_000,
        workers=a.workers or (1 if q else 2),
        quick=q,
        reuse_thieves=a.reuse_thieves,
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
        "wrote %s, accounts.md and plots in %.0fs",
        out / "accounts.json",
        report["timings"]["total_s"],
    )
    for g in report["goals"]:
        log.info("  %s %s: %s", "MET " if g["met"] else "MISS", g["goal"], g["measured"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
