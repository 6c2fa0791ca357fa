"""The attack x defense x output sweep and the in-distribution thief, spread over worker
processes (one thread each)."""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from .setup import (
    CURVE_DEFENSES,
    INDIST,
    Context,
    EvalConfig,
    context,
    detector_scores,
    make_attack,
)

log = logging.getLogger("same.evaluation")


def same_answers_as(defense: str, output: str, config: EvalConfig) -> tuple[str, str] | None:
    """The run whose answers this thief receives bit for bit, by the policies' definitions:
    ``monitor`` returns the true answer; ``top1`` keeps the label, so a label thief sees no
    change; a probability thief under ``top1-all`` receives exactly a label thief's one-hot.
    Such runs are not repeated: their record is the other run's, marked ``same_answers_as``."""
    if "none" not in (config.defenses or ("none",)):
        return None
    if defense == "same-monitor":
        return ("none", output)
    if "labels" not in config.output_types:
        return None
    if output == "labels" and defense in ("same-top1", "top1-all"):
        return ("none", "labels")
    if output == "probs" and defense == "top1-all":
        return ("none", "labels")
    return None


def run_attack(ctx: Context, name: str, output: str) -> dict:
    """Every defense for one attack and output type; with probabilities, also every
    detector's scores of the attack's queries (as sent with no defense)."""
    config = ctx.config
    attack = make_attack(name, ctx)
    trainer = ctx.trainer()
    benign_scores = ctx.defenses["none"].respond(ctx.benign).scores
    records, curves = [], []
    undefended_queries = None
    for dname in ctx.defenses:
        twin = same_answers_as(dname, output, config)
        if twin is not None:
            twin_name = "/".join(twin)
            records.append(
                {"attack": name, "defense": dname, "output": output, "same_answers_as": twin_name}
            )
            continue
        record, curve, queries = _run_defense(
            ctx, attack, trainer, name, dname, output, benign_scores
        )
        records.append(record)
        curves += [curve] if curve else []
        if dname == "none":
            undefended_queries = queries
    payload = {"attack": name, "output": output, "records": records, "curves": curves}
    if undefended_queries is not None and output == config.output_types[0]:
        payload["scores"] = detector_scores(ctx.graphs.run(undefended_queries), undefended_queries)
    return payload


def _run_defense(ctx, attack, trainer, name: str, dname: str, output: str, benign_scores):
    """One (attack, defense, output) run: ``(record, curve or None, the queries sent)``."""
    from ..attacks import InProcessOracle, LabelOnly
    from .defenses import DefendedPipeline
    from .metrics import detection_metrics

    config = ctx.config
    start = time.perf_counter()
    oracle = InProcessOracle(DefendedPipeline(ctx.graphs, ctx.defenses[dname]), config.budget)
    thief_view = LabelOnly(oracle) if output == "labels" else oracle
    # Curves: none vs misinformation; knockoff's cost extra clones, so probabilities only.
    wants_curve = (
        config.curves
        and dname in CURVE_DEFENSES
        and (name in ("jbda", "dfme") or output == "probs")
    )
    saved = getattr(attack, "checkpoints", None)
    if saved is not None and not wants_curve:
        attack.checkpoints = ()
    trained_before, reused_before = trainer.trained, trainer.reused
    result = attack.run(thief_view, trainer, output, ctx.clone_accuracy if wants_curve else None)
    if saved is not None:
        attack.checkpoints = saved
    clone = ctx.clone_metrics(result.clone)
    detection = detection_metrics(benign_scores, oracle.scores, ctx.settings.threshold)
    record = {
        "attack": name,
        "defense": dname,
        "output": output,
        "budget": config.budget,
        "queries_used": result.queries_used,
        **clone,
        "flag_rate": float(oracle.flagged.mean()) if len(oracle.flagged) else 0.0,
        "detection": {
            k: detection[k] for k in ("auroc", "aupr", "fpr_at_95_tpr", "tpr_at_threshold")
        },
        "clone_trainings_run": trainer.trained - trained_before,
        "clone_trainings_reused": trainer.reused - reused_before,
        "time_s": round(time.perf_counter() - start, 1),
        "info": result.info,
    }
    log.info(
        f"[{name}] {output:<6} {dname:<20} clone acc {clone['clone_accuracy']:.3f} "
        f"fidelity {clone['clone_fidelity']:.3f} flagged {record['flag_rate']:.3f} "
        f"queries {result.queries_used} ({record['time_s']:.0f}s)"
    )
    points = [[int(q), float(a)] for q, a in result.curve] if result.curve else None
    curve = (
        {"attack": name, "defense": dname, "output": output, "points": points} if points else None
    )
    return record, curve, oracle.queries


def run_indist(ctx: Context) -> dict:
    """The adaptive attacker of the issue: it holds a disjoint slice of MNIST (the calibration
    split, 750 labelled digits the victim never trained or was tested on) and queries with it,
    then with shifted copies up to the budget. What does SAME do, what does the thief gain?"""
    from ..attacks import InProcessOracle, query_in_batches
    from ..attacks.base import extend_pool
    from .defenses import DefendedPipeline
    from .metrics import detection_metrics

    config = ctx.config
    trainer = ctx.trainer()
    own = ctx.splits.calibration
    full_steps = config.clone.epochs * -(-config.budget // config.clone.batch_size)
    onehot = np.eye(ctx.num_classes, dtype=np.float32)[own.labels]
    own_clone = trainer.fit(own.images, onehot, min_steps=full_steps)
    own_acc = ctx.clone_accuracy(own_clone)
    log.info(f"[{INDIST}] clone on its own {len(own)} labelled images: acc {own_acc:.3f}")
    benign_scores = ctx.defenses["none"].respond(ctx.benign).scores
    # (pool, output types, defenses): the own slice answers "what does querying add to my own
    # labels"; the shifted copies spend the whole budget, with and without misinformation.
    runs = [
        ("own-slice", own.images, config.output_types, ("none",)),
        (
            "own-slice+shifts",
            extend_pool(own.images, own.labels, config.budget, config.seed + 3)[0],
            config.output_types,
            ("none", "same-misinformation"),
        ),
    ]
    rows = []
    for pool_name, pool, outputs, defenses in runs:
        for output in outputs:
            for dname in defenses:
                if dname not in ctx.defenses:
                    continue
                oracle = InProcessOracle(
                    DefendedPipeline(ctx.graphs, ctx.defenses[dname]), config.budget
                )
                order = np.random.default_rng(config.seed).permutation(len(pool))
                sent = pool[order[: min(len(pool), config.budget)]]
                answer = query_in_batches(oracle, sent, 64)
                # As many optimiser steps as a full-budget clone: small sets not undertrained.
                clone = trainer.fit_answers(sent, answer, output, min_steps=full_steps)
                metrics = ctx.clone_metrics(clone)
                det = detection_metrics(benign_scores, oracle.scores, ctx.settings.threshold)
                row = {
                    "pool": pool_name,
                    "output": output,
                    "defense": dname,
                    "queries_used": oracle.queries_used,
                    **metrics,
                    "gain_over_own_points": round(100 * (metrics["clone_accuracy"] - own_acc), 2),
                    "flag_rate": float(oracle.flagged.mean()),
                    "auroc": det["auroc"],
                }
                rows.append(row)
                log.info(
                    f"[{INDIST}] {pool_name:<17} {output:<6} {dname:<20} clone acc "
                    f"{metrics['clone_accuracy']:.3f} (own {own_acc:.3f}) flagged "
                    f"{row['flag_rate']:.3f} AUROC {row['auroc']:.3f}"
                )
    return {
        "attack": INDIST,
        "own_data_size": len(own),
        "own_clone_accuracy": own_acc,
        "rows": rows,
    }


def exit_with_parent(parent: int) -> None:
    """Worker initializer: leave when the evaluation process is gone (killed, Ctrl-C'd), so
    no orphaned worker keeps training clones on a shared machine."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _task(config: EvalConfig, name: str, output: str | None) -> dict:
    start = time.perf_counter()
    ctx = context(config)  # built once per worker process
    payload = run_indist(ctx) if name == INDIST else run_attack(ctx, name, output)
    payload["time_s"] = round(time.perf_counter() - start, 1)
    return payload


# ----------------------------------------------------------------------------- the whole run


def run_matrix(config: EvalConfig) -> list[dict]:
    """Run every (attack, output type) task, longest first, in ``config.workers`` processes
    (or in this one)."""
    from tqdm.auto import tqdm

    slow = ("jbda", "dfme")
    order = sorted(config.attacks, key=lambda a: slow.index(a) if a in slow else len(slow))
    tasks = [(a, o) for a in order for o in config.output_types]
    tasks += [(INDIST, None)] if config.indist else []
    results = []
    # disable=None: a bar only on a terminal (a log file gets no progress lines)
    bar = tqdm(total=len(tasks), desc="attack tasks", unit="task", file=sys.stdout, disable=None)
    if config.workers <= 1:
        for name, output in tasks:
            results.append(_task(config, name, output))
            bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(
            config.workers,
            mp_context=mp.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            futures = {pool.submit(_task, config, n, o): (n, o) for n, o in tasks}
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
                bar.set_postfix_str("done " + "/".join(filter(None, futures[future])))
    bar.close()
    return results
