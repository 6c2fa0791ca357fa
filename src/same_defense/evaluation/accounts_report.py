"""``reports/accounts.{md,png}``: the account-level evaluation for people."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..reporting.markdown import cell, table


def write_plot(report: dict, path: Path) -> None:
    """Clone accuracy against accounts, one panel per output type, undefended dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs, s = report["attacks"], report["settings"]
    fig, axes = plt.subplots(
        1, len(s["outputs"]), figsize=(6 * len(s["outputs"]), 4.5), squeeze=False, sharey=True
    )
    for ax, output in zip(axes[0], s["outputs"], strict=True):
        for i, attack in enumerate(s["attacks"]):
            mine = [r for r in recs if (r["attack"], r["output"]) == (attack, output)]
            ks = sorted({r["accounts"] for r in mine} - {0})
            acc = [np.mean([r["clone_accuracy"] for r in mine if r["accounts"] == k]) for k in ks]
            ax.plot(ks, acc, "o-", color=f"C{i}", label=attack)
            und = [r["clone_accuracy"] for r in mine if r["accounts"] == 0]
            if und:
                ax.axhline(float(np.mean(und)), color=f"C{i}", ls="--", lw=1)
        ax.set(
            xscale="log",
            xlabel="accounts the thief spreads its queries over",
            title=f"{output} (dashed: undefended)",
            ylim=(0, 1),
        )
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("clone accuracy (test split)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Account-level SAME, budget {s['budget']} queries")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(report: dict, path: Path) -> None:
    """``accounts.md``: the goals, then the honest population, one account, the k sweep."""
    path.write_text("\n".join(markdown_lines(report)))


def markdown_lines(report: dict) -> list[str]:
    """The lines of ``accounts.md`` (also shown in ``docs/results.md``)."""
    s, h, t = report["settings"], report["honest"], report["settings"]["account_test"]
    seeds = ", ".join(map(str, s["seeds"]))

    def rows(items: list[dict], keys: str) -> list[list]:
        return [[item.get(k) for k in keys.split()] for item in items]

    def span(x: list | None) -> str:
        return "-" if x is None else f"{cell(x[0])} to {cell(x[1])}"

    out = [
        "# Account-level SAME: offline evaluation",
        "",
        f"Budget {s['budget']} queries per thief, policy `{s['policy']}`, seeds {seeds} "
        f"(k = 1; the first seed elsewhere). Test: level {t['level']}, p0 "
        f"{t['p0']}, p1 {t['p1']}, h {t['h']:.2f}. Total {report['timings']['total_s']:.0f} s.",
        "",
        "## Goals",
        "",
    ]
    goals = [{**g, "met": "yes" if g["met"] else "**no**"} for g in report["goals"]]
    out += table(["goal", "measured", "met"], rows(goals, "goal measured met"))
    out += [
        "## Honest accounts",
        "",
        f"{h['accounts']} accounts x {h['queries_per_account']} "
        f"test queries; bound on P(false alarm) per account "
        f"{h['false_alarm_bound_per_account']:.2g}.",
        "",
    ]
    kinds = [{"kind": k, **v} for k, v in {**h["kinds"], "overall": h["overall"]}.items()]
    out += table(
        "kind|accounts|suspected|share|CP 95 % upper|accuracy lost (points)|of which suspicion|"
        "max peak CUSUM".split("|"),
        rows(
            kinds,
            "kind accounts suspected suspected_share suspected_cp_upper95 "
            "accuracy_lost_points lost_to_suspicion_points peak_cusum_max",
        ),
    )
    out += ["## One account (mean and range over seeds)", ""]
    one = [
        {
            **r,
            "acc": span(r["clone_accuracy_range"]),
            "drops": span(r["drop_points_range"]),
            "delays": ", ".join(cell(d) for d in r["detection_delays"]),
        }
        for r in report["one_account"]
    ]
    out += table(
        "attack|output|undefended|clone acc|range|drop (points)|drop range|detection delays|"
        "forced share".split("|"),
        rows(
            one,
            "attack output undefended_accuracy_mean clone_accuracy_mean acc "
            "drop_points_mean drops delays forced_share_mean",
        ),
    )
    out += ["## Thief spread over k accounts (k = 0: undefended)", ""]
    used = "{accounts_suspected}/{accounts_used}"
    sweep = [{**r, "of": used.format(**r) if r["accounts"] else "-"} for r in report["attacks"]]
    out += table(
        "attack|output|k|seed|clone acc|fidelity|drop (points)|delay|suspected / used|forced share|"
        "policy share".split("|"),
        rows(
            sweep,
            "attack output accounts seed clone_accuracy clone_fidelity drop_points "
            "detection_delay of forced_share policy_share",
        ),
    )
    return out
