"""A population of honest accounts through the account layer: how many are suspected, how much
accuracy they lose, and how close their statistic comes to the alarm.

Like the thieves in :mod:`.account_population`, they go through
:class:`~same_defense.accounts.AccountService` and :func:`~same_defense.core.defend`: the served
code, without the transport. Two families:

- **behaviours** on the clean test split (:data:`HONEST_KINDS`): typical users, one- and
  two-class users, repeats, bursts, small batches, young accounts with 5-50 queries, heavy
  users with 10,000 distinct queries, and many perturbed photos of the same few digits (the
  honest twin of a thief's dilution);
- **shifted users** (:mod:`same_harness.data.shifts`): the test digits through another camera,
  pen or scanner, each kind at several strengths, 400 queries in requests of 4 (the setting of
  issue 18), from unrelated networks, answered with and without the population monitor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from same_defense.accounts import AccountService, Answered, sample_hashes
from same_defense.core import TIERS, DefenseSettings, defend
from same_defense.core.lineage import sketches

HONEST_KINDS = (
    "uniform",
    "single-class",
    "two-class",
    "repeated",
    "bursts",
    "small-batches",
    "young",
    "perturbed-few",
    "heavy",
)
HONEST_BATCH = 32  # a typical client's request size (bursts: 64; small batches: 1 to 4)
REPEAT_POOL = 20
BURST = 64
YOUNG_QUERIES = (5, 50)
HEAVY_EVERY = 100  # one account in a hundred is a heavy user (AccountEvalConfig.heavy_queries)
FEW_DIGITS = 3  # perturbed-few: photos of this many digits...
FEW_COPIES = 40  # ... this many distinct photos of each, from a bank of FEW_BASES digits
FEW_BASES = 150
FIRST_QUERIES = 100  # "an account's first 100 queries", the young-account window
SHIFTED_QUERIES = 400
SHIFTED_REQUEST = 4
HISTORY = 250  # clean queries of an established customer before its data drift


@dataclass
class AnsweredSet:
    """An image set answered once per tier: what any account sending its images receives."""

    labels: np.ndarray  # true labels
    victim_ok: np.ndarray  # the victim's own answer is right
    served: dict[str, np.ndarray]  # tier -> label served
    evidence: np.ndarray  # [N, 3] the account test's input
    hashes: np.ndarray  # per image
    sketches: np.ndarray  # per image, uint8 [N, 49] (core.lineage)

    def __len__(self) -> int:
        return len(self.labels)


def answer_set(outputs, images: np.ndarray, labels: np.ndarray, settings: DefenseSettings):
    """Answer ``images`` (graph ``outputs`` given) at every tier, with the served code."""
    decisions = {
        tier: defend(outputs.logits, outputs.recon_error, outputs.shadow_logits, settings, tier)
        for tier in TIERS
    }
    normal = decisions[""]
    return AnsweredSet(
        labels=np.asarray(labels),
        victim_ok=normal.true_probs.argmax(axis=1) == labels,
        served={t: d.labels for t, d in decisions.items()},
        evidence=normal.evidence(),
        hashes=np.asarray(sample_hashes(images), dtype=object),
        sketches=sketches(images),
    )


def honest_requests(
    kind: str, ordinal: int, labels: np.ndarray, queries: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One honest account's requests: index arrays into its image set, ``queries`` in all.

    ``ordinal`` (the account's rank within its kind) cycles the class of single- and
    two-class users, so every class is someone's only class. ``perturbed-few`` indexes the
    perturbed set (``FEW_COPIES`` adjacent copies per base digit), ``heavy`` the heavy set.
    """
    n, classes = len(labels), int(labels.max()) + 1
    of_class = [np.flatnonzero(labels == c) for c in range(classes)]
    c = ordinal % classes
    size = HONEST_BATCH
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
        )[:queries]
        size = BURST
    elif kind == "young":
        picks = rng.integers(0, n, int(rng.integers(YOUNG_QUERIES[0], YOUNG_QUERIES[1] + 1)))
        size = 0
    elif kind == "perturbed-few":
        bases = rng.choice(n // FEW_COPIES, FEW_DIGITS, replace=False)
        picks = rng.permutation(
            np.concatenate([b * FEW_COPIES + np.arange(FEW_COPIES) for b in bases])
        )
        size = 4
    elif kind == "heavy":
        picks = rng.permutation(n)[:queries]
    else:
        raise ValueError(f"unknown honest kind {kind!r}; choose from {', '.join(HONEST_KINDS)}")
    if kind in ("small-batches", "young"):
        sizes = rng.integers(1, 5, len(picks))  # more than enough; cut at the total below
        cuts = np.cumsum(sizes)
        cuts = cuts[cuts < len(picks)]
    else:
        cuts = np.arange(size, len(picks), size)
    return np.split(picks, cuts)


def clopper_pearson_upper(successes: int, trials: int, confidence: float = 0.95) -> float:
    """Upper limit of the two-sided Clopper-Pearson interval: an exact bound on a rate from
    a count, since 0 of 1,000 suspected says "below 0.37 %", not "zero"."""
    from scipy.stats import beta

    if trials <= 0 or successes >= trials:
        return 1.0
    return float(beta.ppf(1 - (1 - confidence) / 2, successes + 1, trials - successes))


class Tally:
    """Per kind: accounts, the tiers they were answered at, queries, and what was served.

    An account counts as *suspected* when it was answered at the review or suspected tier
    and is not held at the end (a drift's hold lifts the suspicion for the operator to
    decide); ``strong`` when it was answered with the policy; ``reviewed_before_hold`` when
    it was answered at a tier for a while and then held.
    """

    def __init__(self) -> None:
        self.accounts = self.review = self.strong = self.held = self.before_hold = 0
        self.n = self.victim_ok = self.served_ok = 0
        self.first_n = self.first_victim_ok = self.first_served_ok = 0
        self.peaks: list[float] = []
        self.delays: list[int] = []

    def add_account(self, service: AccountService, name: str, worst_tier: str) -> None:
        state = service.store.get(name)
        answered = TIERS.index(worst_tier)
        self.accounts += 1
        self.held += state.held
        self.before_hold += state.held and answered > 0
        if not state.held:
            self.review += answered == 1
            self.strong += answered == 2
        self.peaks.append(state.peak_cusum)
        if state.suspected_at_query:
            self.delays.append(state.suspected_at_query)

    def add_answers(self, victim_ok: np.ndarray, served_ok: np.ndarray, sent_before: int) -> None:
        self.n += len(victim_ok)
        self.victim_ok += int(victim_ok.sum())
        self.served_ok += int(served_ok.sum())
        first = max(0, min(len(victim_ok), FIRST_QUERIES - sent_before))
        self.first_n += first
        self.first_victim_ok += int(victim_ok[:first].sum())
        self.first_served_ok += int(served_ok[:first].sum())

    def merge(self, other: Tally) -> None:
        for k, v in vars(other).items():
            setattr(self, k, getattr(self, k) + v)

    def row(self) -> dict:
        n, a = max(self.n, 1), max(self.accounts, 1)
        suspected = self.review + self.strong
        return {
            "accounts": self.accounts,
            "suspected": suspected,
            "review": self.review,
            "strong": self.strong,
            "held": self.held,
            "reviewed_before_hold": self.before_hold,
            "suspected_share": suspected / a,
            "suspected_cp_upper95": clopper_pearson_upper(suspected, self.accounts),
            "queries": self.n,
            "victim_accuracy": self.victim_ok / n,
            "received_accuracy": self.served_ok / n,
            "accuracy_lost_points": 100 * (self.victim_ok - self.served_ok) / n,
            "first_100_lost_points": 100
            * (self.first_victim_ok - self.first_served_ok)
            / max(self.first_n, 1),
            "peak_cusum_max": max(self.peaks, default=0.0),
            "suspected_at_queries": sorted(self.delays)[:20],
        }


def serve_account(
    service: AccountService,
    name: str,
    answered: AnsweredSet,
    requests: list[np.ndarray],
    tally: Tally,
    links: tuple[str, ...] = (),
) -> None:
    """One honest account's requests through the account layer (the gateway's path)."""
    sent, worst = 0, ""
    for idx in requests:
        _, tier = service.serve(name, _replay(answered, idx), links)
        worst = max(worst, tier, key=TIERS.index)
        got = answered.served[tier][idx] == answered.labels[idx]
        tally.add_answers(answered.victim_ok[idx], got, sent)
        sent += len(idx)
    tally.add_account(service, name, worst)


def network(j: int) -> tuple[str, ...]:
    """A distinct /24 for account ``j`` of a service (customers are unrelated). Counted, not
    hashed: ``hash()`` of a string changes from process to process, and 10,000 accounts in
    24 bits collide now and then, which pooled two customers' evidence at random."""
    return (f"net:{100 + (j >> 16)}.{(j >> 8) & 255}.{j & 255}.0/24",)


def run_behaviours(
    service_for,
    sets: dict[str, AnsweredSet],
    accounts: int,
    queries: int,
    kinds: tuple[str, ...] = HONEST_KINDS,
    seed: int = 0,
) -> dict:
    """``accounts`` honest accounts cycling through ``kinds``; one service for them all."""
    service: AccountService = service_for()
    tallies = {k: Tally() for k in kinds}
    common = [k for k in kinds if k != "heavy"] or list(kinds)
    for j in range(accounts):
        heavy = "heavy" in kinds and j % HEAVY_EVERY == HEAVY_EVERY - 1
        kind = "heavy" if heavy else common[j % len(common)]
        ordinal = j // (HEAVY_EVERY if heavy else len(common))
        answered = sets.get(kind, sets["test"])
        wanted = len(answered) if kind == "heavy" else queries
        rng = np.random.default_rng([seed, j])
        requests = honest_requests(kind, ordinal, answered.labels, wanted, rng)
        serve_account(
            service, f"honest-{kind}-{ordinal}", answered, requests, tallies[kind], network(j)
        )
    overall = Tally()
    for t in tallies.values():
        overall.merge(t)
    return {
        "accounts": accounts,
        "queries_per_account": queries,
        "false_alarm_bound_per_account": service.settings.false_alarm_bound(queries),
        "overall": overall.row(),
        "kinds": {k: t.row() for k, t in tallies.items()},
    }


def run_shifted(
    service_for,
    shifted: dict[str, AnsweredSet],
    clean: AnsweredSet,
    accounts_per_kind: int = 10,
    seed: int = 0,
) -> dict:
    """Shifted honest users, ``accounts_per_kind`` unrelated accounts per ``kind@strength``,
    their requests interleaved (they use the service at the same time), each kind on a fresh
    service with the population monitor. Two cases: ``established`` customers send
    ``HISTORY`` clean test digits first and then the shifted ones (their camera changed: the
    drift the monitor is for), ``new`` customers arrive with shifted data (indistinguishable
    from a thief with look-alike data). Accuracy is counted over the shifted queries."""
    out = {}
    for name, answered in shifted.items():
        row = {"victim_accuracy": float(answered.victim_ok.mean())}
        for mode, history in (("established", HISTORY), ("new", 0)):
            service: AccountService = service_for()
            tally = Tally()
            names = [f"shifted-{j}" for j in range(accounts_per_kind)]
            links = [network(j) for j in range(accounts_per_kind)]
            for j in range(accounts_per_kind):
                rng = np.random.default_rng([seed, j, 1])
                for idx in honest_requests("uniform", j, clean.labels, history, rng):
                    service.serve(names[j], _replay(clean, idx), links[j])
            plans = [
                np.concatenate(
                    honest_requests(
                        "uniform",
                        j,
                        answered.labels,
                        SHIFTED_QUERIES,
                        np.random.default_rng([seed, j]),
                    )
                )
                for j in range(accounts_per_kind)
            ]
            worst = [""] * accounts_per_kind
            for start in range(0, SHIFTED_QUERIES, SHIFTED_REQUEST):
                for j, plan in enumerate(plans):
                    idx = plan[start : start + SHIFTED_REQUEST]
                    _, tier = service.serve(names[j], _replay(answered, idx), links[j])
                    worst[j] = max(worst[j], tier, key=TIERS.index)
                    got = answered.served[tier][idx] == answered.labels[idx]
                    tally.add_answers(answered.victim_ok[idx], got, start)
            for n, w in zip(names, worst, strict=True):
                tally.add_account(service, n, w)
            drifts = service.population.drifts if service.population is not None else 0
            row[mode] = {**tally.row(), "drift_alerts": drifts}
        out[name] = row
    return out


def _replay(answered: AnsweredSet, idx: np.ndarray):
    """The ``answer`` callable of :meth:`AccountService.serve` for precomputed answers."""
    return lambda tier: Answered(
        None, answered.evidence[idx], list(answered.hashes[idx]), answered.sketches[idx]
    )
