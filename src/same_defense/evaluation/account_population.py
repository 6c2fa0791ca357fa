"""Who talks to the account layer in the offline evaluation, and what is measured about them:
a thief spread over ``k`` accounts (:class:`AccountOracle`, summarised by :func:`summarise` and
:func:`goals`); the honest accounts are in :mod:`.honest_population`.

Both go through :class:`~same_defense.accounts.AccountService` over a
:class:`~same_defense.accounts.MemoryStore`, the code the gateway runs, and answer with
:func:`~same_defense.core.defend` (``force=True`` for a suspected account), the code the
Triton step runs; only the transport is missing. So what is measured here is the served
defense, not a re-implementation of it.
"""

from __future__ import annotations

import numpy as np

from ..accounts import AccountService, MemoryStore, sample_hashes
from ..attacks.oracle import Answer, _Accounting
from ..core import (
    AccountSettings,
    DefenseSettings,
    check_inputs,
    defend,
    reference_from_manifest,
)
from ..serving.inprocess import InProcessSame
from .defenses import CachedGraphs

GOAL_ATTACKS = ("knockoff-digits8x8", "knockoff-natural", "jbda")  # the >= 50-point goal
VIEW_FIELDS = ("score", "flagged", "forced", "account")


def account_service(manifest: dict) -> AccountService:
    """A fresh service (empty in-memory store) with the test settings the build wrote."""
    found = reference_from_manifest(manifest)
    if found is None:
        raise ValueError("the manifest has no 'accounts' section: rebuild the repository")
    settings: AccountSettings = found[1]
    return AccountService(settings, MemoryStore(settings.dedupe_window))


def ever_suspected(service: AccountService, account: str) -> int:
    """Distinct queries of ``account`` when its alarm fired; 0 if it never did (offline the
    suspicion's time to live never runs out, so the alarm index is what matters)."""
    return service.store.get(account).suspected_at_query


class AccountOracle(_Accounting):
    """The thief's batches spread round-robin over ``accounts`` accounts (batch ``i`` goes to
    account ``i % accounts``), answered as the gateway and the defense step would.

    A thief with many accounts dilutes each account's evidence; this oracle measures what that
    buys it. Besides the transcript it keeps the operator's view of every query: SAME score,
    per-query flag, whether the answer was forced (account already suspected), and the account.
    ``graphs`` may be shared between oracles so that repeated images run the ONNX graphs once.
    """

    def __init__(
        self,
        pipeline: InProcessSame,
        service: AccountService,
        accounts: int = 1,
        budget: int | None = None,
        graphs: CachedGraphs | None = None,
        prefix: str = "thief",
        record: bool = True,
    ) -> None:
        super().__init__(budget, record)
        if accounts < 1:
            raise ValueError(f"accounts must be >= 1, got {accounts}")
        self.settings: DefenseSettings = pipeline.settings
        self.service = service
        self.graphs = graphs if graphs is not None else CachedGraphs(pipeline.graphs)
        self.names = [f"{prefix}-{i}" for i in range(accounts)]
        self.batches = 0
        # The operator's view of every query, per batch: never shown to the thief.
        self._view: dict[str, list[np.ndarray]] = {k: [] for k in VIEW_FIELDS}
        # account -> thief queries sent (all accounts) by the end of the batch that tipped it
        self.first_suspected: dict[str, int] = {}

    def _answer(self, images: np.ndarray) -> Answer:
        index = self.batches % len(self.names)
        name = self.names[index]
        self.batches += 1
        out = self.graphs.run(images)
        check_inputs(out.input_stats)  # refused by the ensemble before any account bookkeeping
        hashes = sample_hashes(images)

        def answer(suspected: bool):
            decision = defend(
                out.logits, out.recon_error, out.shadow_logits, self.settings, force=suspected
            )
            return decision, decision.pvalues, hashes

        # The gateway's own path: a batch that raises the alarm is answered as suspected.
        decision, force = self.service.serve(name, answer)
        if name not in self.first_suspected and ever_suspected(self.service, name):
            self.first_suspected[name] = self.queries_used + len(images)
        n = len(images)
        for key, value in zip(
            VIEW_FIELDS,
            (decision.scores, decision.flagged, np.full(n, force), np.full(n, index)),
            strict=True,
        ):
            self._view[key].append(np.asarray(value))
        return Answer(
            np.asarray(decision.probs, dtype=np.float32),
            np.asarray(decision.labels, dtype=np.int64).reshape(-1),
        )

    def view(self, key: str) -> np.ndarray:
        """Per query sent: ``score``, ``flagged`` (per-query gate), ``forced`` (answered while
        its account was already suspected) or ``account`` (index of the account used)."""
        parts = self._view[key]
        empty = {"score": np.float64, "account": np.int64}.get(key, bool)
        return np.concatenate(parts) if parts else np.zeros(0, empty)

    def summary(self) -> dict:
        """The operator's figures for this thief (JSON-ready)."""
        forced, flagged = self.view("forced"), self.view("flagged")
        n_sent = max(len(forced), 1)
        suspected = len(self.first_suspected)
        delays = [ever_suspected(self.service, name) for name in self.first_suspected]
        return {
            "accounts": len(self.names),
            "accounts_used": len(np.unique(self.view("account"))),
            "accounts_suspected": suspected,
            "accounts_suspected_share": suspected / len(self.names),
            # distinct queries of the first account when it was suspected (None: never)
            "detection_delay": ever_suspected(self.service, self.names[0]) or None,
            "detection_delay_median": float(np.median(delays)) if delays else None,
            "thief_queries_at_first_alarm": min(self.first_suspected.values(), default=None),
            "forced_share": float(forced.sum() / n_sent),
            "policy_share": float((forced | flagged).sum() / n_sent),
            "flag_rate": float(flagged.sum() / n_sent),
        }


# ------------------------------------------------------------------------ honest population


def summarise(records: list[dict]) -> list[dict]:
    """Drop in points against the undefended clone of the same attack and output (of the same
    seed where that was run, else the mean undefended clone); the one-account runs over seeds
    as mean and min-max spread."""
    base: dict[tuple, list[float]] = {}
    for r in (r for r in records if r["accounts"] == 0):
        base.setdefault((r["attack"], r["output"]), []).append(r["clone_accuracy"])
        base[(r["attack"], r["output"], r["seed"])] = [r["clone_accuracy"]]
    for r in records:
        ref = base.get((r["attack"], r["output"], r["seed"])) or base.get(
            (r["attack"], r["output"])
        )
        r["drop_points"] = (
            None if not ref else round(float(100 * (np.mean(ref) - r["clone_accuracy"])), 2)
        )
    rows = []
    for a, o in dict.fromkeys((r["attack"], r["output"]) for r in records):
        pick = {
            k: [r for r in records if (r["attack"], r["output"], r["accounts"]) == (a, o, k)]
            for k in (0, 1)
        }
        if not pick[1]:
            continue
        acc = [r["clone_accuracy"] for r in pick[1]]
        drops = [r["drop_points"] for r in pick[1] if r["drop_points"] is not None]
        und = [r["clone_accuracy"] for r in pick[0]]
        rows.append(
            {
                "attack": a,
                "output": o,
                "seeds": [r["seed"] for r in pick[1]],
                "clone_accuracy_mean": float(np.mean(acc)),
                "clone_accuracy_range": [min(acc), max(acc)],
                "undefended_accuracy_mean": float(np.mean(und)) if und else None,
                "drop_points_mean": round(float(np.mean(drops)), 2) if drops else None,
                "drop_points_range": [min(drops), max(drops)] if drops else None,
                "detection_delays": [r["detection_delay"] for r in pick[1]],
                "forced_share_mean": float(np.mean([r["forced_share"] for r in pick[1]])),
            }
        )
    return rows


def goals(one_account: list[dict], honest: dict) -> list[dict]:
    """The targets against what was measured (``met`` may be False: reported as is)."""
    rows = []
    for s in (s for s in one_account if s["attack"] in GOAL_ATTACKS):
        d = s["drop_points_mean"]
        rows.append(
            {
                "goal": f"one account: clone acc >= 50 points below undefended "
                f"({s['attack']}, {s['output']}; mean over seeds)",
                "measured": d,
                "worst_seed": s["drop_points_range"][0] if d is not None else None,
                "met": d is not None and d >= 50,
            }
        )
    o = honest["overall"]
    rows.append(
        {
            "goal": "honest accounts suspected <= 0.1 %",
            "measured": o["suspected_share"],
            "cp_upper95": o["suspected_cp_upper95"],
            "met": o["suspected_share"] <= 1e-3,
        }
    )
    lost = round(o["accuracy_lost_points"], 3)
    rows.append(
        {"goal": "honest accuracy lost <= 0.5 points", "measured": lost, "met": lost <= 0.5}
    )
    return rows
