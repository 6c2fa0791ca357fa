"""``reports/accounts.{md,png}``: the account-level evaluation summarised, judged and drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..reporting.markdown import cell, table
from .honest_population import clopper_pearson_upper

GOAL_CLONE = 0.30
CLOSE_POINTS = 10
# How far above what the thief has without the service (pool-only, own labels, own data) its
# clone may end: the dilution goal, used for every such floor.
FLOOR_POINTS = 5
SHIFT_VICTIM_FLOOR = 0.85


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _pick(records: list[dict], **match) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _plain(attack: str, output: str, **extra) -> dict:
    """The match of a plain thief: one image per request, no dilution, requests in turn."""
    return {
        "attack": attack,
        "output": output,
        "request_size": 1,
        "ratio": 0,
        "spread": "round-robin",
        **extra,
    }


def cost_to_steal(curve: list[tuple[int, float]], undefended: float | None) -> int | None:
    """Fewest unrelated accounts that keep the clone within ``CLOSE_POINTS`` of undefended
    (None: no measured count did)."""
    if undefended is None:
        return None
    for k, acc in sorted(curve):
        if acc >= undefended - CLOSE_POINTS / 100:
            return k
    return None


def compare_responses(records: list[dict]) -> list[dict]:
    """Per thief: clone accuracy under each response with one account and with 50."""
    rows = []
    for a, o in dict.fromkeys((r["attack"], r["output"]) for r in records):
        row = {"attack": a, "output": o}
        for r in records:
            if (r["attack"], r["output"], r["links"], r["request_size"], r["ratio"], r["seed"]) == (
                a,
                o,
                "unrelated",
                1,
                0,
                0,
            ) and r["accounts"] in (1, 50):
                row[f"{r['response']}@{r['accounts']}"] = r["clone_accuracy"]
        rows.append(row)
    return rows


def own_floors(own: list[dict]) -> dict[tuple, float]:
    """Own-data clone accuracy by ``(attack, seed, pool)``; the pool alone is attack None."""
    return {(r["attack"], r["seed"], r["pool"]): r["clone_accuracy"] for r in own}


def summarise(records: list[dict], own: list[dict]) -> dict:
    """Per thief: undefended, one account over seeds, what its own data buy it, the account
    curves, dilution, cost (default response); and the responses compared."""
    floors = own_floors(own)
    records = [{"spread": "round-robin", **r} for r in records]  # reports before the field
    compared = compare_responses([r for r in records if r["spread"] == "round-robin"])
    records = [r for r in records if r.get("response", "graded") == "graded"]
    rows = []
    for a, o in dict.fromkeys((r["attack"], r["output"]) for r in records):
        und = [r["clone_accuracy"] for r in _pick(records, attack=a, output=o, accounts=0)]
        one = _pick(records, **_plain(a, o, accounts=1, links="unrelated"))
        curves = {}
        for mode in ("unrelated", "one-network", "one-group"):
            points = [
                (r["accounts"], r["clone_accuracy"])
                for r in _pick(records, **_plain(a, o, links=mode))
                if r["accounts"] >= (1 if mode == "unrelated" else 2) and r["seed"] == 0
            ]
            if points:
                curves[mode] = sorted(points)
        shuffled = [
            (r["accounts"], r["clone_accuracy"])
            for r in _pick(records, **_plain(a, o, links="unrelated", spread="shuffled"))
        ]
        if shuffled:  # k = 1 is the same thief either way
            curves["shuffled"] = sorted(shuffled + curves.get("unrelated", [])[:1])
        batch8 = _pick(records, attack=a, output=o, accounts=1, request_size=8)
        dilution = [
            {
                "pool": r["pool"],
                "ratio": r["ratio"],
                "clone_accuracy": r["clone_accuracy"],
                "pool_only": floors.get((None, r["seed"], r["pool"])),
                "own_data": floors.get((a, r["seed"], r["pool"])),
                "misinformed_share": r["misinformed_share"],
                "detection_delay": r["detection_delay"],
            }
            for r in records
            if (r["attack"], r["output"]) == (a, o) and r["ratio"]
        ]
        undefended = _mean(und)
        # What the service's answers add to the clone the thief has without asking.
        paired = [
            (r["clone_accuracy"], floors[(a, r["seed"], 0)])
            for r in one
            if (a, r["seed"], 0) in floors
        ]
        # The thief picks the cheaper way to spread its requests.
        costs = [
            cost_to_steal(curves[m], undefended) for m in ("unrelated", "shuffled") if m in curves
        ]
        found = [c for c in costs if c is not None]
        rows.append(
            {
                "attack": a,
                "output": o,
                "undefended": undefended,
                "one_account_mean": _mean([r["clone_accuracy"] for r in one]),
                "one_account_worst": max((r["clone_accuracy"] for r in one), default=None),
                "one_account_delays": [r["detection_delay"] for r in one],
                "one_account_misinformed": _mean([r["misinformed_share"] for r in one]),
                "own_labels": _mean([own for _, own in paired]),
                "one_account_gain_worst": max((c - own for c, own in paired), default=None),
                "batch8": batch8[0]["clone_accuracy"] if batch8 else None,
                "curves": curves,
                "cost_to_steal": min(found) if found else None,
                "max_accounts": max((k for k, _ in curves.get("unrelated", [])), default=0),
                "dilution": sorted(dilution, key=lambda d: (d["pool"], d["ratio"])),
            }
        )
    return {"thieves": rows, "responses": compared}


def thief_goals(s: dict) -> list[dict]:
    name = f"{s['attack']}, {s['output']}"
    rows = []
    if s["one_account_worst"] is not None:
        rows.append(
            {
                "goal": f"one account, 1/request: clone <= {GOAL_CLONE} ({name}; worst seed)",
                "measured": round(s["one_account_worst"], 3),
                "met": s["one_account_worst"] <= GOAL_CLONE,
            }
        )
    if s.get("one_account_gain_worst") is not None:
        gain = round(100 * s["one_account_gain_worst"], 1)
        rows.append(
            {
                "goal": f"one account, 1/request: clone <= own labels + {FLOOR_POINTS} points "
                f"({name}; worst seed)",
                "measured": gain,
                "met": gain <= FLOOR_POINTS,
            }
        )
    for mode in ("one-network", "one-group"):
        points = s["curves"].get(mode)
        if points:
            worst = max(acc for _, acc in points)
            rows.append(
                {
                    "goal": f"Sybils on {mode}: clone <= {GOAL_CLONE} for every k ({name})",
                    "measured": round(worst, 3),
                    "met": worst <= GOAL_CLONE,
                }
            )
    # The cost to steal means something where accounts were swept and the undefended clone
    # is worth stealing (a clone at chance is "within 10 points" of anything).
    if s["max_accounts"] > 1 and (s["undefended"] or 0) > GOAL_CLONE:
        cost = s["cost_to_steal"]
        rows.append(
            {
                "goal": f"cost to steal >= 50 unrelated accounts ({name})",
                "measured": cost if cost is not None else f"> {s['max_accounts']}",
                "met": cost is None or cost >= 50,
            }
        )
    for d in s["dilution"]:
        for floor, label in (("pool_only", "pool-only"), ("own_data", "own data")):
            if d["ratio"] > 2 or d.get(floor) is None:
                continue
            above = round(100 * (d["clone_accuracy"] - d[floor]), 1)
            rows.append(
                {
                    "goal": f"dilution P{d['pool']} R{d['ratio']}: clone <= {label} + "
                    f"{FLOOR_POINTS} points ({name})",
                    "measured": above,
                    "met": above <= FLOOR_POINTS,
                }
            )
    return rows


def shifted_overall(shifted: dict, mode: str = "established") -> dict:
    """The shifts the victim itself still answers at >= 0.85: accounts suspected and the
    worst accuracy deficit against the victim, for ``mode`` customers."""
    kept = {k: v for k, v in shifted.items() if v["victim_accuracy"] >= SHIFT_VICTIM_FLOOR}
    accounts = sum(v[mode]["accounts"] for v in kept.values())
    suspected = sum(v[mode]["suspected"] for v in kept.values())
    strong = sum(v[mode].get("strong", 0) for v in kept.values())
    worst = max((v[mode]["accuracy_lost_points"] for v in kept.values()), default=0.0)
    return {
        "kinds": len(kept),
        "accounts": accounts,
        "suspected": suspected,
        "strong": strong,
        "worst_lost": worst,
    }


def goals(summary: dict, honest: dict, shifted_by_response: dict) -> list[dict]:
    """The targets of issues 17 and 18 against what was measured (reported as is); the
    shifted users under the default response."""
    shifted = shifted_by_response.get("graded", {})
    rows = [g for s in summary["thieves"] for g in thief_goals(s)]
    # "Suspected" in the goals of issues 17 and 18 is what their tables measured: answered as
    # a thief (the response policy, misinformation). The review tier (top-1 labels, correct,
    # visible to the operator) did not exist then; its counts are shown beside.
    o = honest["overall"]
    strong = o.get("strong", o["suspected"])
    rows.append(
        {
            "goal": "honest accounts answered as suspected <= 0.1 %",
            "measured": f"{strong} / {o['accounts']} (CP 95 % upper "
            f"{100 * clopper_pearson_upper(strong, o['accounts']):.3f} %; "
            f"{o['suspected'] - strong} reviewed)",
            "met": strong <= 1e-3 * o["accounts"],
        }
    )
    lost, first = round(o["accuracy_lost_points"], 3), round(o["first_100_lost_points"], 3)
    rows.append(
        {"goal": "honest accuracy lost <= 0.5 points", "measured": lost, "met": lost <= 0.5}
    )
    rows.append(
        {"goal": "honest: first 100 queries lose <= 1 point", "measured": first, "met": first <= 1}
    )
    # Established customers drift under the population monitor; new ones look like thieves
    # with foreign data from their first query: reviewed (top-1 labels, correct) is the most
    # the scores can tell, and neither may be misled.
    for mode, who in (("established", "drifted established"), ("new", "new shifted")):
        so = shifted_overall(shifted, mode)
        if not so["kinds"]:
            continue
        rows.append(
            {
                "goal": f"{who} customers (victim >= 0.85): answered as suspected <= 0.1 %",
                "measured": f"{so['strong']} / {so['accounts']} "
                f"({so['suspected'] - so['strong']} reviewed)",
                "met": so["strong"] <= 1e-3 * so["accounts"],
            }
        )
        rows.append(
            {
                "goal": f"{who} customers (victim >= 0.85): accuracy within 1 point",
                "measured": round(so["worst_lost"], 3),
                "met": so["worst_lost"] <= 1.0,
            }
        )
    return rows


def write_plots(report: dict, out: Path) -> None:
    """Clone accuracy against accounts (per link mode) and against the dilution ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thieves = report["summary"]["thieves"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for ax, mode in zip(axes, ("unrelated", "one-network", "one-group"), strict=True):
        for i, s in enumerate(thieves):
            points = s["curves"].get(mode)
            if not points:
                continue
            ks, acc = zip(*points, strict=True)
            style = "-" if s["output"] == "probs" else ":"
            ax.plot(ks, acc, "o" + style, color=f"C{i // 2}", label=f"{s['attack']} {s['output']}")
            if mode == "unrelated" and s["curves"].get("shuffled"):
                ks, acc = zip(*s["curves"]["shuffled"], strict=True)
                ax.plot(ks, acc, "x" + style, color=f"C{i // 2}", alpha=0.6)
            if s["undefended"] is not None:
                ax.axhline(s["undefended"], color=f"C{i // 2}", ls="--", lw=0.8)
        ax.axhline(GOAL_CLONE, color="k", lw=0.8)
        title = mode + (" (x: requests shuffled over the accounts)" if mode == "unrelated" else "")
        ax.set(xscale="log", xlabel="accounts (1 image per request)", title=title, ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("clone accuracy (dashed: undefended)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accounts_clone_vs_accounts.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, s in enumerate(thieves):
        for pool in sorted({d["pool"] for d in s["dilution"]}):
            d = [x for x in s["dilution"] if x["pool"] == pool]
            ax.plot(
                [x["ratio"] for x in d],
                [x["clone_accuracy"] for x in d],
                "o-",
                color=f"C{i}",
                label=f"{s['attack']} {s['output']} P{pool}",
            )
            if d and d[0]["pool_only"] is not None:
                ax.axhline(d[0]["pool_only"], color=f"C{i}", ls=":", lw=0.8)
            if d and d[0].get("own_data") is not None:
                ax.axhline(d[0]["own_data"], color=f"C{i}", ls="--", lw=0.8)
    ax.set(
        xlabel="copies of real images per foreign query (R)",
        ylabel="clone accuracy",
        title="dilution, one account (dotted: pool-only clone; dashed: own data)",
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accounts_clone_vs_dilution.png", dpi=110)
    plt.close(fig)


def write_markdown(report: dict, path: Path) -> None:
    """``accounts.md``: goals, honest behaviours, shifted users, thieves."""
    path.write_text("\n".join(markdown_lines(report)) + "\n")


def _honest_lines(h: dict) -> list[str]:
    kinds = [{"kind": k, **v} for k, v in {**h["kinds"], "overall": h["overall"]}.items()]
    return table(
        "kind|accounts|queries|suspected (review + strong)|CP 95 % upper|accuracy lost "
        "(points)|first 100 lost|max peak statistic".split("|"),
        [
            [
                r["kind"],
                r["accounts"],
                r["queries"],
                f"{r['review']} + {r['strong']}",
                f"{100 * r['suspected_cp_upper95']:.3f} %",
                cell(r["accuracy_lost_points"]),
                cell(r["first_100_lost_points"]),
                cell(r["peak_cusum_max"]),
            ]
            for r in kinds
        ],
    )


def _shifted_lines(shifted: dict) -> list[str]:
    rows = []
    for name, v in shifted.items():
        e, n = v["established"], v["new"]
        rows.append(
            [
                name,
                cell(v["victim_accuracy"]),
                f"{e['suspected']} / {e['accounts']}",
                f"{e['held']} ({e.get('reviewed_before_hold', 0)})",
                e["drift_alerts"],
                cell(e["received_accuracy"]),
                f"{n['review']} + {n['strong']} / {n['accounts']}",
                cell(n["received_accuracy"]),
            ]
        )
    return table(
        "shift|victim accuracy|established: suspected|held (of which reviewed first)|drift "
        "alerts|established: served "
        "accuracy|new: review + strong|new: served accuracy".split("|"),
        rows,
    )


def _thief_lines(summary: dict) -> list[str]:
    rows = []
    for s in summary["thieves"]:
        curve = ", ".join(f"{k}: {cell(a)}" for k, a in s["curves"].get("unrelated", []))
        if s["curves"].get("shuffled"):
            curve += "; shuffled: " + ", ".join(
                f"{k}: {cell(a)}" for k, a in s["curves"]["shuffled"]
            )
        linked = "; ".join(
            f"{m}: " + ", ".join(f"{k}: {cell(a)}" for k, a in s["curves"].get(m, []))
            for m in ("one-network", "one-group")
            if s["curves"].get(m)
        )
        rows.append(
            [
                s["attack"],
                s["output"],
                cell(s["undefended"]),
                cell(s.get("own_labels")),
                cell(s["one_account_mean"]),
                cell(s["one_account_worst"]),
                ", ".join(cell(d) for d in s["one_account_delays"]),
                cell(s["batch8"]),
                curve or "-",
                linked or "-",
                cell(s["cost_to_steal"]) if s["cost_to_steal"] else f"> {s['max_accounts']}",
            ]
        )
    return table(
        "thief|output|undefended|own labels (no query)|1 account (mean)|worst seed|queries to "
        "suspicion|8/request|"
        "unrelated accounts k: clone|linked k: clone|cost to steal (accounts)".split("|"),
        rows,
    )


def markdown_lines(report: dict) -> list[str]:
    """The lines of ``accounts.md`` (also shown in ``docs/results.md``)."""
    s, t = report["settings"], report["settings"]["account_test"]
    out = [
        "# Account-level SAME: thieves who adapt, honest users who drift",
        "",
        f"Budget {s['budget']} foreign queries per thief, policy `{s['policy']}`, seeds "
        f"{', '.join(map(str, s['seeds']))} (one account; the first elsewhere). Test: levels "
        f"{t['levels']}, lifts {t['lifts']}, h {t['h']:.2f}, strong at {t['strong_factor']} h "
        f"with >= {t['strong_flag_share']} of queries flagged"
        + (
            f" and the victim unsure of them (mean top-1 < {t['strong_max_confidence']}) or "
            f">= {t['strong_lineage_share']} of them a step from an earlier query"
            if t.get("strong_patterns")
            else ""
        )
        + ". Total "
        f"{report['timings'].get('total_s', 0):.0f} s.",
        "",
        "## Goals",
        "",
    ]
    goals = [{**g, "met": "yes" if g["met"] else "**no**"} for g in report["goals"]]
    out += table(["goal", "measured", "met"], [[g["goal"], g["measured"], g["met"]] for g in goals])
    out += ["## Honest accounts", ""] + _honest_lines(report["honest"])
    for response, rows in report["shifted"].items():
        out += [
            f"## Shifted honest users, response `{response}` (unrelated accounts, 400 queries, "
            "4 per request)",
            "",
        ]
        out += _shifted_lines(rows)
    out += ["## Responses compared (clone accuracy, 1 per request, unrelated accounts)", ""]
    names = report["settings"]["responses"]
    out += table(
        ["thief", "output", *[f"{r}, {k} account(s)" for r in names for k in (1, 50)]],
        [
            [c["attack"], c["output"], *[cell(c.get(f"{r}@{k}")) for r in names for k in (1, 50)]]
            for c in report["summary"]["responses"]
        ],
    )
    out += ["Honest users behind each response: the shifted tables above.", ""]
    new = shifted_overall(report["shifted"].get("graded", {}), "new")
    out += [
        f"New accounts that arrive with shifted data (default response, the {new['kinds']} "
        f"shifts the victim answers at >= 0.85): {new['suspected']} of {new['accounts']} "
        f"reviewed or suspected, worst accuracy lost {cell(new['worst_lost'])} points.",
        "",
    ]
    out += ["## Thieves", ""] + _thief_lines(report["summary"])
    out += [
        "*Own labels*: the clone the thief trains on the data it holds with the labels it knows "
        "without asking (the digit it rendered or drew, the labelled 8x8 set, JBDA's seed "
        "digits), no query at all; the service cannot take that away, only what its answers "
        "add. *Own data* in the dilution table: the pool's copies and those labelled data "
        "together.",
        "",
    ]
    out += ["## Dilution (one account, 1 per request)", ""]
    out += table(
        "thief|output|pool P|copies R|clone acc|pool-only clone|own data clone|misinformed|"
        "queries to suspicion".split("|"),
        [
            [
                s["attack"],
                s["output"],
                d["pool"],
                d["ratio"],
                cell(d["clone_accuracy"]),
                cell(d["pool_only"]),
                cell(d.get("own_data")),
                cell(d["misinformed_share"]),
                cell(d["detection_delay"]),
            ]
            for s in report["summary"]["thieves"]
            for d in s["dilution"]
        ],
    )
    return out
