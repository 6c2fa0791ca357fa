"""The evaluation report: benign cost, detection per detector, clone drops and the goals."""

from __future__ import annotations

from dataclasses import asdict

from ..attacks import clone_architecture
from .metrics import answer_accuracy
from .setup import INDIST, JBDA_SEEDS, Context, detector_scores


def assemble(ctx: Context, results: list[dict]) -> tuple[dict, dict]:
    """The JSON report, and the arrays (scores) the plots need."""
    target_fpr = ctx.manifest["target_fpr"]
    victim_acc = answer_accuracy(ctx.victim_test_labels, ctx.splits.test.labels)
    benign = benign_table(ctx, victim_acc)
    benign_scores, thresholds = detector_thresholds(ctx, target_fpr)

    records, curves, detection, attack_scores, indist = [], [], [], {}, None
    for payload in results:
        if payload["attack"] == INDIST:
            indist = payload
            continue
        records += payload["records"]
        curves += payload["curves"]
        if "scores" in payload:
            attack_scores[payload["attack"]] = payload["scores"]
            detection += detection_rows(payload, benign_scores, thresholds)
    # After the detection rows: they read the attack's own first record as it was measured.
    complete_records(records, benign)

    report = {
        "schema_version": 1,
        "settings": report_settings(ctx, target_fpr),
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


def benign_table(ctx: Context, victim_acc: float) -> dict:
    """Per defense: its accuracy on the benign test client and what that costs against none."""
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
    return benign


def detector_thresholds(ctx: Context, target_fpr: float) -> tuple[dict, dict]:
    """Benign scores of every detector, and its threshold at the target FPR."""
    from same_defense.export.calibration import threshold_at_fpr

    # Thresholds come from the calibration client, never from the benign test client they
    # are measured on.
    benign_scores = detector_scores(ctx.benign, ctx.splits.test.images)
    cal_scores = detector_scores(ctx.calibration, ctx.splits.calibration.images)
    thresholds = {k: threshold_at_fpr(v, target_fpr) for k, v in cal_scores.items()}
    thresholds["same-a0.99"] = ctx.settings.threshold  # the served one
    # PRADA: delta just below the lowest W the benign calibration client ever reached.
    thresholds["prada"] = float(cal_scores["prada"].max()) + 1e-9
    return benign_scores, thresholds


def detection_rows(payload: dict, benign_scores: dict, thresholds: dict) -> list[dict]:
    """One row per detector for an attack's query stream: its metrics at its threshold."""
    from .baselines import first_flag
    from .metrics import detection_metrics

    rows = []
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
        rows.append(row)
    return rows


def complete_records(records: list[dict], benign: dict) -> None:
    """Fill in the figures of skipped runs, the clone drops and the benign cost, in place."""
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


def report_settings(ctx: Context, target_fpr: float) -> dict:
    """The report's ``settings``: the run's configuration and the served defense's settings."""
    config = ctx.config
    return {
        **{k: v for k, v in asdict(config).items() if k != "clone"},
        "clone": asdict(config.clone),
        "clone_architecture": config.clone.architecture or clone_architecture(ctx.manifest),
        "dataset": ctx.manifest["dataset"],
        "threshold": ctx.settings.threshold,
        "alpha": ctx.settings.alpha,
        "target_fpr": target_fpr,
        "margin": ctx.settings.params.margin,
        "am_tau": ctx.defenses["am-maxsoftmax"].tau if "am-maxsoftmax" in ctx.defenses else None,
        "n_benign_test": len(ctx.splits.test),
        "jbda_seeds": JBDA_SEEDS,
    }


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
