"""A population of honest accounts through the account layer: how many are suspected (never,
we hope), how much accuracy they lose, and how close their statistic comes to the alarm.

Like the thief in :mod:`.account_population`, they go through
:class:`~same_defense.accounts.AccountService` and :func:`~same_defense.core.defend`: the served
code, without the transport.
"""

from __future__ import annotations

import numpy as np

from ..accounts import AccountService, sample_hashes
from ..core import DefenseSettings, defend
from ..serving.inprocess import GraphOutputs

HONEST_KINDS = ("uniform", "single-class", "two-class", "repeated", "bursts", "small-batches")
HONEST_BATCH = 32  # a typical client's request size (bursts: 64; small batches: 1 to 4)
REPEAT_POOL = 20
BURST = 64


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
