"""Who talks to the account layer in the offline evaluation, and what is measured about them:
a thief spread over ``k`` accounts (:class:`AccountOracle`, summarised by :func:`summarise` and
:func:`goals`) and a population of honest accounts (:func:`run_honest_population`).

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
    defend,
    describe_problems,
    find_input_problems,
    reference_from_manifest,
)
from ..serving.inprocess import GraphOutputs, InProcessSame, InvalidInput
from .defenses import CachedGraphs

HONEST_KINDS = ("uniform", "single-class", "two-class", "repeated", "bursts", "small-batches")
HONEST_BATCH = 32  # a typical client's request size (bursts: 64; small batches: 1 to 4)
REPEAT_POOL = 20
BURST = 64
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
        problems = find_input_problems(out.input_stats)
        if problems:  # the served ensemble refuses these before any account bookkeeping
            raise InvalidInput(describe_problems(problems))
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


def honest_requests(
    kind: str, ordinal: int, labels: np.ndarray, queries: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One honest account's requests: index arrays into the test split, ``queries`` in all.

    ``ordinal`` (the account's rank within its kind) cycles the class of single- and
    two-class users, so every class is someone's only class.
    """
    n, classes = len(labels), int(labels.max()) + 1
    of_class = [np.flatnonzero(labels == c) for c in range(classes)]
    c = ordinal % classes
    if kind in ("uniform", "small-batches"):
        picks = rng.integers(0, n, queries)
    elif kind == "single-class":
        picks = rng.choice(of_class[c], queries)
    elif kind == "two-class":
        d = (c + 1 + (ordinal // classes) % (classes - 1)) % classes
        picks = rng.choice(np.concatenate([of_class[c], of_class[d]]), queries)
    elif kind == "repeated":
        picks = rng.choice(rng.choice(n, REPEAT_POOL, replace=False), queries)
    elif kind == "bursts":
        bursts = -(-queries // BURST)
        picks = np.concatenate(
            [rng.choice(of_class[rng.integers(classes)], BURST) for _ in range(bursts)]
        )
        picks = picks[:queries]
    else:
        raise ValueError(f"unknown honest kind {kind!r}; choose from {', '.join(HONEST_KINDS)}")
    if kind == "small-batches":
        sizes = rng.integers(1, 5, queries)  # more than enough; cut at the total below
        cuts = np.cumsum(sizes)
        cuts = cuts[cuts < queries]
    else:
        size = BURST if kind == "bursts" else HONEST_BATCH
        cuts = np.arange(size, queries, size)
    return np.split(picks, cuts)


def clopper_pearson_upper(successes: int, trials: int, confidence: float = 0.95) -> float:
    """Upper limit of the two-sided Clopper-Pearson interval: an exact bound on a rate from
    a count, since 0 of 1,000 suspected says "below 0.37 %", not "zero"."""
    from scipy.stats import beta

    if trials <= 0:
        return 1.0
    if successes >= trials:
        return 1.0
    return float(beta.ppf(1 - (1 - confidence) / 2, successes + 1, trials - successes))


def run_honest_population(
    settings: DefenseSettings,
    service: AccountService,
    outputs: GraphOutputs,
    images: np.ndarray,
    labels: np.ndarray,
    accounts: int = 1000,
    queries: int = 1000,
    kinds: tuple[str, ...] = HONEST_KINDS,
    seed: int = 0,
) -> dict:
    """Honest accounts sending test images; per kind and overall, how many were suspected and
    how much accuracy they lost.

    The graph outputs of the test split are computed once (``outputs``) and both answers
    (normal and forced) precomputed per image, so the population costs little; the account
    layer itself is not shortcut: every request goes through ``service.serve`` (the gateway's
    path) with its p-values and sample hashes.
    """
    normal = defend(outputs.logits, outputs.recon_error, outputs.shadow_logits, settings)
    forced = defend(
        outputs.logits, outputs.recon_error, outputs.shadow_logits, settings, force=True
    )
    hashes = np.asarray(sample_hashes(images), dtype=object)
    victim_ok = normal.true_probs.argmax(axis=1) == labels
    stats = {k: np.zeros(6) for k in kinds}  # accounts, suspected, n, victim ok, got ok, normal ok
    peaks: dict[str, list[float]] = {k: [] for k in kinds}
    delays: dict[str, list[int]] = {k: [] for k in kinds}
    for j in range(accounts):
        kind, ordinal = kinds[j % len(kinds)], j // len(kinds)
        name = f"honest-{kind}-{ordinal}"
        rng = np.random.default_rng([seed, j])
        for idx in honest_requests(kind, ordinal, labels, queries, rng):
            answer, _ = service.serve(
                name,
                lambda s, idx=idx: (
                    forced if s else normal,
                    normal.pvalues[idx],
                    list(hashes[idx]),
                ),
            )
            got = answer.labels[idx] == labels[idx]
            stats[kind][2:] += (
                len(idx),
                victim_ok[idx].sum(),
                got.sum(),
                (normal.labels[idx] == labels[idx]).sum(),
            )
        state = service.store.get(name)
        stats[kind][:2] += (1, state.suspected_at_query > 0)
        peaks[kind].append(state.peak_cusum)
        if state.suspected_at_query:
            delays[kind].append(state.suspected_at_query)

    def row(s: np.ndarray, peak: list[float], delay: list[int]) -> dict:
        n_acc, n_susp, n, v_ok, g_ok, p_ok = (int(x) for x in s)
        return {
            "accounts": n_acc,
            "suspected": n_susp,
            "suspected_share": n_susp / max(n_acc, 1),
            "suspected_cp_upper95": clopper_pearson_upper(n_susp, n_acc),
            "queries": n,
            "victim_accuracy": v_ok / max(n, 1),
            "received_accuracy": g_ok / max(n, 1),
            "accuracy_lost_points": 100 * (v_ok - g_ok) / max(n, 1),
            "lost_to_suspicion_points": 100 * (p_ok - g_ok) / max(n, 1),
            "peak_cusum_max": max(peak, default=0.0),
            "suspected_at_queries": sorted(delay),
        }

    return {
        "accounts": accounts,
        "queries_per_account": queries,
        "false_alarm_bound_per_account": service.settings.false_alarm_bound(queries),
        "overall": row(sum(stats.values()), sum(peaks.values(), []), sum(delays.values(), [])),
        "kinds": {k: row(stats[k], peaks[k], delays[k]) for k in kinds},
    }


# ------------------------------------------------------------------------ thief summaries


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
