"""``make evaluate``: every attack against every defense, both output types; detection tables,
the ablation of ``a``, the in-distribution (adaptive) attacker, and a check of the in-process
pipeline against the live gRPC endpoint. Writes ``reports/evaluation.{json,md}`` and plots.

    python -m same_defense.evaluation.run            # default: 4,000 queries per attack
    python -m same_defense.evaluation.run --quick    # smoke run (small budget, short training)

The sweep runs on :class:`~same_defense.attacks.InProcessOracle` (the repository's ONNX graphs
and the defense core, as the Triton step runs them); attacks are spread over ``--workers``
processes with one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..attacks import OUTPUT_TYPES, CloneConfig, clone_architecture, predict
from ..core.decision import DEFAULT_ALPHA
from ..core.score import rescaled_alpha
from .metrics import answer_accuracy

ATTACKS = ("knockoff-digits8x8", "knockoff-natural", "jbda", "dfme", "noise")
# Added to the default attacks when its files are found (the paper's CIFAR-10 setting).
LOCAL_ATTACKS = ("knockoff-cifar100",)
EXTRA_ATTACKS = ("knockoff-digits8x8-adaptive", "knockoff-natural-adaptive")
INDIST = "indist"  # the adaptive attacker with in-distribution data (its own section)
CURVE_DEFENSES = ("none", "same-misinformation")
# Served mix, reconstruction error only, KL only, and the authors' a = 0.99 on [-1, 1] pixels.
ALPHAS = (DEFAULT_ALPHA, 1.0, 0.0, rescaled_alpha(DEFAULT_ALPHA, 2.0))
JBDA_SEEDS = 150


@dataclass(frozen=True)
class EvalConfig:
    repository: str = "model_repository"
    out_dir: str = "reports"
    budget: int = 4000
    clone: CloneConfig = field(default_factory=CloneConfig)
    attacks: tuple[str, ...] = ATTACKS
    transfer_root: str | None = None  # local transfer sets (CIFAR-100); see default_attacks
    defenses: tuple[str, ...] = ()  # empty: all
    output_types: tuple[str, ...] = OUTPUT_TYPES
    workers: int = 2
    seed: int = 0
    grpc_check: int = 256  # queries per query source sent through the live endpoint; 0 = skip
    indist: bool = True
    curves: bool = True
    quick: bool = False

    def checkpoints(self) -> tuple[int, ...]:
        return tuple(c for c in (self.budget // 4, self.budget // 2) if c > 0)


# --------------------------------------------------------------------------- per process state


class Context:
    """What one worker needs: data splits, cached graphs, defenses, benign answers."""

    def __init__(self, config: EvalConfig) -> None:
        import torch

        from ..core.manifest import load_verified_manifest, settings_from_manifest
        from ..core.score import same_score
        from ..data import splits_from_manifest
        from ..export.repository import MANIFEST_NAME, ONNX_FILES
        from ..serving.inprocess import GraphRunner
        from .defenses import DEFENSE_NAMES, CachedGraphs, build_defenses

        torch.set_num_threads(1)
        repo = Path(config.repository)
        self.config = config
        self.manifest = load_verified_manifest(
            str(repo), str(repo / "defense" / "1" / MANIFEST_NAME)
        )
        self.splits = splits_from_manifest(self.manifest)
        self.shape = tuple(self.manifest["input_shape"])
        self.num_classes = len(self.manifest["class_names"])
        self.graphs = CachedGraphs(
            GraphRunner(repo / ONNX_FILES["victim"], repo / ONNX_FILES["reconstructor"], 1)
        )
        # The response policy comes from each defense; threshold, a and parameters from the
        # manifest as the server reads them.
        self.settings = settings_from_manifest(self.manifest, "monitor")
        self.benign = self.graphs.run(self.splits.test.images)
        self.calibration = self.graphs.run(self.splits.calibration.images)
        self.victim_test_labels = self.benign.logits.argmax(axis=1)
        calibration_scores = same_score(
            self.calibration.recon_error,
            self.calibration.logits,
            self.calibration.shadow_logits,
            self.settings.alpha,
        )
        defenses = build_defenses(
            self.settings, self.calibration.logits, self.manifest["target_fpr"], calibration_scores
        )
        chosen = config.defenses or DEFENSE_NAMES
        self.defenses = {name: defenses[name] for name in chosen}

    def trainer(self):
        from ..attacks import CloneTrainer

        return CloneTrainer(
            self.shape, self.num_classes, clone_architecture(self.manifest), self.config.clone
        )

    def clone_accuracy(self, model) -> float:
        return answer_accuracy(predict(model, self.splits.test.images), self.splits.test.labels)

    def jbda_seeds(self) -> np.ndarray:
        """150 labelled-class-balanced images from the calibration split: in-distribution data
        the thief holds, disjoint from the victim's training and test data."""
        cal = self.splits.calibration
        per_class = max(1, JBDA_SEEDS // self.num_classes)
        index = np.concatenate(
            [np.flatnonzero(cal.labels == c)[:per_class] for c in range(self.num_classes)]
        )
        return cal.images[np.sort(index)]


_CONTEXT: Context | None = None


def context(config: EvalConfig) -> Context:
    global _CONTEXT
    if _CONTEXT is None or _CONTEXT.config != config:
        _CONTEXT = Context(config)
    return _CONTEXT


def make_attack(name: str, ctx: Context):
    from ..attacks import Dfme, Jbda, KnockoffNets, UniformNoise, transfer_set

    cfg = ctx.config
    if name.startswith("knockoff-"):
        parts = name.split("-")
        source, sampling = parts[1], ("adaptive" if parts[-1] == "adaptive" else "random")
        pool, groups = transfer_set(
            source, cfg.budget, ctx.shape, seed=cfg.seed + 1, root=cfg.transfer_root
        )
        return KnockoffNets(pool, groups, sampling, seed=cfg.seed, checkpoints=cfg.checkpoints())
    if name == "jbda":
        return Jbda(ctx.jbda_seeds(), seed=cfg.seed)
    if name == "dfme":
        return Dfme(ctx.shape, seed=cfg.seed)
    if name == "noise":
        return UniformNoise(ctx.shape, seed=cfg.seed + 2)
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS + EXTRA_ATTACKS)}")


# --------------------------------------------------------------------------------- one attack


def _log(msg: str) -> None:
    print(msg, flush=True)


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


def run_attack(config: EvalConfig, name: str, output: str) -> dict:
    """Every defense for one attack and output type; with probabilities, also every
    detector's scores of the attack's queries (as sent with no defense)."""
    from ..attacks import InProcessOracle, LabelOnly
    from .defenses import DefendedPipeline
    from .metrics import clone_metrics, detection_metrics

    ctx = context(config)
    attack = make_attack(name, ctx)
    trainer = ctx.trainer()
    benign_scores = ctx.defenses["none"].respond(ctx.benign).scores
    records, curves = [], []
    undefended_queries = None
    for dname, defense in ctx.defenses.items():
        twin = same_answers_as(dname, output, config)
        if twin is not None:
            records.append(
                {
                    "attack": name,
                    "defense": dname,
                    "output": output,
                    "same_answers_as": "/".join(twin),
                }
            )
            continue
        start = time.perf_counter()
        oracle = InProcessOracle(DefendedPipeline(ctx.graphs, defense), config.budget)
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
        result = attack.run(
            thief_view, trainer, output, ctx.clone_accuracy if wants_curve else None
        )
        if saved is not None:
            attack.checkpoints = saved
        clone = clone_metrics(
            predict(result.clone, ctx.splits.test.images),
            ctx.victim_test_labels,
            ctx.splits.test.labels,
        )
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
        records.append(record)
        if result.curve:
            curves.append(
                {
                    "attack": name,
                    "defense": dname,
                    "output": output,
                    "points": [[int(q), float(a)] for q, a in result.curve],
                }
            )
        if dname == "none":
            undefended_queries = oracle.queries
        _log(
            f"[{name}] {output:<6} {dname:<20} clone acc {clone['clone_accuracy']:.3f} "
            f"fidelity {clone['clone_fidelity']:.3f} flagged {record['flag_rate']:.3f} "
            f"queries {result.queries_used} ({record['time_s']:.0f}s)"
        )
    payload = {"attack": name, "output": output, "records": records, "curves": curves}
    if undefended_queries is not None and output == config.output_types[0]:
        payload["scores"] = detector_scores(ctx, undefended_queries)
    return payload


def detector_scores(ctx: Context, queries: np.ndarray) -> dict[str, np.ndarray]:
    """Every detector's score of ``queries`` (the attack as sent with no defense)."""
    from ..core.score import same_score
    from .baselines import energy_score, max_softmax_score, prada_stream, running_mean
    from .defenses import CLIENT_WINDOW

    out = ctx.graphs.run(queries)
    scores = {
        f"same-a{a:g}": same_score(out.recon_error, out.logits, out.shadow_logits, a)
        for a in ALPHAS
    }
    scores["same-client32"] = running_mean(scores["same-a0.99"], CLIENT_WINDOW)
    scores["max-softmax"] = max_softmax_score(out.logits)
    scores["energy"] = energy_score(out.logits)
    scores["prada"] = 1.0 - prada_stream(queries, out.logits.argmax(axis=1))
    return scores


# ------------------------------------------------------------------- the in-distribution thief


def run_indist(config: EvalConfig) -> dict:
    """The adaptive attacker of the issue: it holds a disjoint slice of MNIST (the calibration
    split, 750 labelled digits the victim never trained or was tested on) and queries with it,
    then with shifted copies up to the budget. What does SAME do, what does the thief gain?"""
    from ..attacks import InProcessOracle, query_in_batches
    from ..attacks.base import extend_pool
    from .defenses import DefendedPipeline
    from .metrics import clone_metrics, detection_metrics

    ctx = context(config)
    trainer = ctx.trainer()
    own = ctx.splits.calibration
    full_steps = config.clone.epochs * -(-config.budget // config.clone.batch_size)
    onehot = np.eye(ctx.num_classes, dtype=np.float32)[own.labels]
    own_clone = trainer.fit(own.images, onehot, min_steps=full_steps)
    own_acc = ctx.clone_accuracy(own_clone)
    _log(f"[{INDIST}] clone on its own {len(own)} labelled images: acc {own_acc:.3f}")
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
                metrics = clone_metrics(
                    predict(clone, ctx.splits.test.images),
                    ctx.victim_test_labels,
                    ctx.splits.test.labels,
                )
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
                _log(
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


def _exit_with_parent(parent: int) -> None:
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
    payload = run_indist(config) if name == INDIST else run_attack(config, name, output)
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
    bar = tqdm(total=len(tasks), desc="attack tasks", unit="task", file=sys.stdout)
    if config.workers <= 1:
        for name, output in tasks:
            results.append(_task(config, name, output))
            bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(
            config.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            futures = {pool.submit(_task, config, n, o): (n, o) for n, o in tasks}
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
                bar.set_postfix_str("done " + "/".join(filter(None, futures[future])))
    bar.close()
    return results


def grpc_check(config: EvalConfig, log_file: Path) -> dict:
    """Send a sample of every query source through the live endpoint and through the
    in-process pipeline with the served policy; report the largest difference."""
    from ..attacks import Dfme, GrpcOracle, InProcessOracle, Jbda, transfer_set
    from ..data import make_query_set
    from ..export.repository import refresh_defense_code
    from ..serving.embedded import EmbeddedTriton, free_port
    from ..serving.inprocess import InProcessSame

    ctx = context(config)
    repo = Path(config.repository)
    refresh_defense_code(repo)  # the step runs the current core, as `make demo` does
    n = config.grpc_check
    sets = {
        "benign": ctx.splits.test.images[:n],
        "digits8x8": transfer_set("digits8x8", n, ctx.shape, config.seed + 1)[0],
        "natural": make_query_set("natural", n, ctx.shape, config.seed + 1),
        "noise": make_query_set("noise", n, ctx.shape, config.seed + 2),
    }
    server = EmbeddedTriton(
        repo,
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        log_file=log_file,
    )
    reference = InProcessSame(repo)
    report: dict = {"policy": reference.settings.policy, "queries_per_set": n, "sets": {}}
    start = time.perf_counter()
    with server:
        transcripts = {}
        # Adaptive attacks run live (small budgets): their answers depend on earlier answers.
        trainer = ctx.trainer()
        for name, attack in (
            ("jbda", Jbda(ctx.jbda_seeds()[: max(1, n // 4)], rounds=3)),
            ("dfme", Dfme(ctx.shape, replay=False)),
        ):
            with GrpcOracle(server.grpc_url, budget=n) as live:
                attack.run(live, trainer, "probs")
                transcripts[f"{name}-live"] = (live.queries, live.answers)
        for name, images in sets.items():
            with GrpcOracle(server.grpc_url, budget=len(images)) as live:
                transcripts[name] = (images, live.query(images))
    for name, (images, remote) in transcripts.items():
        local = InProcessOracle(reference).query(images)
        report["sets"][name] = {
            "queries": int(len(images)),
            "max_abs_prob_diff": float(np.abs(remote.probs - local.probs).max()),
            "label_agreement": float((remote.labels == local.labels).mean()),
        }
    report["time_s"] = round(time.perf_counter() - start, 1)
    report["max_abs_prob_diff"] = max(s["max_abs_prob_diff"] for s in report["sets"].values())
    report["min_label_agreement"] = min(s["label_agreement"] for s in report["sets"].values())
    report["queries_total"] = sum(s["queries"] for s in report["sets"].values())
    return report


def assemble(config: EvalConfig, results: list[dict], ctx: Context) -> tuple[dict, dict]:
    """The JSON report, and the arrays (scores) the plots need."""
    from ..core.score import same_score
    from ..export.calibration import threshold_at_fpr
    from .baselines import (
        energy_score,
        first_flag,
        max_softmax_score,
        prada_stream,
        running_mean,
    )
    from .defenses import CLIENT_WINDOW
    from .metrics import detection_metrics

    target_fpr = ctx.manifest["target_fpr"]
    victim_acc = answer_accuracy(ctx.victim_test_labels, ctx.splits.test.labels)
    benign = {}
    for name, defense in ctx.defenses.items():
        decision = defense.respond(ctx.benign)
        acc = answer_accuracy(decision.labels, ctx.splits.test.labels)
        benign[name] = {
            "accuracy": acc,
            "cost_points": round(100 * (victim_acc - acc), 3),
            "changed_answers": float((decision.labels != ctx.victim_test_labels).mean()),
            "flag_rate": float(decision.flagged.mean()) if name.startswith("same") else None,
        }

    # Benign and calibration scores of every detector; thresholds at the target FPR.
    def detectors(out, images):
        s = {
            f"same-a{a:g}": same_score(out.recon_error, out.logits, out.shadow_logits, a)
            for a in ALPHAS
        }
        s["same-client32"] = running_mean(s["same-a0.99"], CLIENT_WINDOW)
        s["max-softmax"] = max_softmax_score(out.logits)
        s["energy"] = energy_score(out.logits)
        s["prada"] = 1.0 - prada_stream(images, out.logits.argmax(axis=1))
        return s

    benign_scores = detectors(ctx.benign, ctx.splits.test.images)
    cal_scores = detectors(ctx.calibration, ctx.splits.calibration.images)
    thresholds = {k: threshold_at_fpr(v, target_fpr) for k, v in cal_scores.items()}
    thresholds["same-a0.99"] = ctx.settings.threshold  # the served one
    # PRADA: delta just below the lowest W the benign calibration client ever reached.
    thresholds["prada"] = float(cal_scores["prada"].max()) + 1e-9

    records, curves, detection, attack_scores, indist = [], [], [], {}, None
    for payload in results:
        if payload["attack"] == INDIST:
            indist = payload
            continue
        records += payload["records"]
        curves += payload["curves"]
        if "scores" not in payload:
            continue
        attack_scores[payload["attack"]] = payload["scores"]
        for det, scores in payload["scores"].items():
            m = detection_metrics(benign_scores[det], scores, thresholds[det])
            row = {"attack": payload["attack"], "detector": det, **m}
            if det == "prada":
                row["queries_until_flag"] = first_flag(1.0 - scores, 1.0 - thresholds["prada"])
                row["benign_client_flagged"] = bool(
                    (benign_scores["prada"] > thresholds["prada"]).any()
                )
            if det == "same-a0.99" and payload["attack"] == "jbda":
                seeds = payload["records"][0]["info"].get("seed_queries", 0)
                row["auroc_without_seed_queries"] = detection_metrics(
                    benign_scores[det], scores[seeds:]
                )["auroc"]
            detection.append(row)

    # Runs skipped because their answers equal another run's: copy that run's figures.
    index = {(r["attack"], r["defense"], r["output"]): r for r in records}
    for r in records:
        if "same_answers_as" in r:
            twin = index[(r["attack"], *r["same_answers_as"].split("/"))]
            r.update({k: v for k, v in twin.items() if k not in ("defense", "output", "time_s")})
            r["time_s"] = 0.0
    # Drop in clone accuracy against the undefended clone of the same attack and output.
    base = {
        (r["attack"], r["output"]): r["clone_accuracy"] for r in records if r["defense"] == "none"
    }
    for r in records:
        ref = base.get((r["attack"], r["output"]))
        r["drop_points"] = None if ref is None else round(100 * (ref - r["clone_accuracy"]), 2)
        r["benign_accuracy"] = benign[r["defense"]]["accuracy"]
        r["benign_cost_points"] = benign[r["defense"]]["cost_points"]

    report = {
        "schema_version": 1,
        "settings": {
            **{k: v for k, v in asdict(config).items() if k != "clone"},
            "clone": asdict(config.clone),
            "clone_architecture": config.clone.architecture or clone_architecture(ctx.manifest),
            "dataset": ctx.manifest["dataset"],
            "threshold": ctx.settings.threshold,
            "alpha": ctx.settings.alpha,
            "target_fpr": target_fpr,
            "margin": ctx.settings.params.margin,
            "am_tau": ctx.defenses["am-maxsoftmax"].tau
            if "am-maxsoftmax" in ctx.defenses
            else None,
            "n_benign_test": len(ctx.splits.test),
            "jbda_seeds": JBDA_SEEDS,
        },
        "victim_test_accuracy": victim_acc,
        "benign": benign,
        "records": records,
        "detection": detection,
        "detector_thresholds": thresholds,
        "curves": curves,
        "adaptive_attacker": indist,
        "goals": goals(records, detection, benign),
    }
    arrays = {"benign": benign_scores, "attacks": attack_scores, "thresholds": thresholds}
    return report, arrays


def goals(records: list[dict], detection: list[dict], benign: dict) -> list[dict]:
    """The issue's targets against what was measured (``met`` may be False: reported as is)."""
    rows = []
    for d in detection:
        if d["detector"] == "same-a0.99":
            rows.append(
                {
                    "goal": f"AUROC >= 0.99 vs {d['attack']}",
                    "measured": d["auroc"],
                    "met": d["auroc"] >= 0.99,
                }
            )
    for r in records:
        if r["defense"] == "same-misinformation" and r["attack"].startswith(("knockoff", "jbda")):
            rows.append(
                {
                    "goal": f"misinformation: clone acc >= 50 points below undefended "
                    f"({r['attack']}, {r['output']})",
                    "measured": r["drop_points"],
                    "met": r["drop_points"] is not None and r["drop_points"] >= 50,
                }
            )
    if "same-misinformation" in benign:
        cost = benign["same-misinformation"]["cost_points"]
        rows.append(
            {
                "goal": "misinformation: benign users lose <= 0.5 points",
                "measured": cost,
                "met": cost <= 0.5,
            }
        )
    return rows


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


def default_attacks(transfer_root: str | None) -> tuple[str, ...]:
    """The packaged attacks, and the local-file ones whose files are at ``transfer_root``."""
    from ..attacks import transfer_set_available

    local = [a for a in LOCAL_ATTACKS if transfer_set_available(a.split("-")[1], transfer_root)]
    return ATTACKS + tuple(local)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    from ..data import source_from_manifest
    from ..export.repository import read_manifest

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


def main(argv: list[str] | None = None) -> int:
    from .defenses import DEFENSE_NAMES, EXPERIMENTAL_DEFENSES
    from .report import write_markdown, write_plots

    args = parse_args(argv)
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
    _log(
        f"== evaluation: budget {config.budget} queries per attack, attacks "
        f"{', '.join(config.attacks)}, {config.workers} worker(s)"
    )
    ctx = context(config)
    check: dict = {"skipped": True}
    if config.grpc_check > 0:
        _log("== live gRPC check (embedded tritonserver)")
        t = time.perf_counter()
        try:
            check = grpc_check(config, Path("logs") / "evaluation-tritonserver.log")
        except Exception as exc:  # reported, and the sweep still runs
            check = {"error": f"{type(exc).__name__}: {exc}"}
            _log(f"   gRPC check FAILED: {check['error']}")
        else:
            _log(
                f"   {check['queries_total']} queries live vs in-process: max |dp| "
                f"{check['max_abs_prob_diff']:.2e}, label agreement "
                f"{check['min_label_agreement']:.4f}"
            )
        timings["grpc_check_s"] = round(time.perf_counter() - t, 1)
    _log("== attack x defense x output sweep (in-process oracle)")
    t = time.perf_counter()
    results = run_matrix(config)
    timings["sweep_s"] = round(time.perf_counter() - t, 1)
    timings.update(
        {
            "task_" + "_".join(filter(None, (r["attack"], r.get("output")))) + "_s": r["time_s"]
            for r in results
        }
    )
    report, arrays = assemble(config, results, ctx)
    report["grpc_check"] = check
    t = time.perf_counter()
    plots = write_plots(report, arrays, out_dir)
    timings["plots_s"] = round(time.perf_counter() - t, 1)
    timings["total_s"] = round(time.perf_counter() - start, 1)
    report["timings"] = timings
    report["plots"] = [str(p) for p in plots]
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out_dir / "evaluation.md")
    _log(
        f"== wrote {out_dir / 'evaluation.json'}, {out_dir / 'evaluation.md'} and "
        f"{len(plots)} plots in {timings['total_s']:.0f}s"
    )
    for g in report["goals"]:
        _log(f"   {'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
