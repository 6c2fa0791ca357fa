"""Account-level detection: a sequential test on each account's SAME scores.

SAME scores one query at a time. A thief whose single queries look nearly benign (digits from
another source) still shifts the *distribution* of its scores, which a per-account test sees.
Three parts, all numpy-only so that the Triton step, the gateway and the offline evaluation run
the same code:

1. **Class-conditional p-values** (:func:`score_pvalues`). Scores differ by predicted class
   (the median per class ranged from 0.5x to 1.6x the overall median), so an honest user who
   sends one class would look anomalous against a global reference. Each score is ranked
   against the calibration scores of the same predicted class:
   ``p = (1 + #{reference >= score}) / (n_c + 1)``.
2. **Exceedances at several levels, bounded per class.** A query *exceeds* level ``t`` when
   ``p <= t`` (levels 0.05, 0.2, 0.5 by default). A finite reference (125 scores a class on
   the default build) sits low or high by chance, so the honest exceedance rate of class ``c``
   at level ``t`` is not ``t`` but at most ``bounds[c][t]``, an upper Beta quantile the build
   computes and stores (``export/calibration.py``).
3. **A bank of CUSUMs, one per (level, alternative).** For level ``t``, honest bound ``u`` and
   an alternative rate ``q = u + lift * (1 - u)``, each distinct query adds
   ``log(q / u)`` if it exceeds, ``log((1 - q) / (1 - u))`` if not: a likelihood ratio whose
   mean is <= 1 for *every* honest stream (rate <= ``u``), so ``S = max(0, S + step)`` crosses
   ``h`` within ``n`` queries with probability <= ``n * exp(-h)`` (Ville's inequality and a
   union over start points). The account is suspected when any of the ``K`` statistics
   reaches ``h``; ``h = log(n * K / delta)`` keeps the union over the bank at ``delta``.
   One CUSUM tuned to a single rate (the previous design, ``p0`` = 0.39 against ``p1`` = 0.8)
   drifted *down* for any thief below about 0.6; the bank has an alternative near every rate
   above honest, and the tail levels see a thief whose scores shift little but often.
   Repeated images count once (the gateway hashes each sample), so an honest user who resends
   the same image cannot drift the test, and neither can a thief by repetition.

The answer to a suspected account is graded (:data:`TIERS`): ``review`` costs information,
not correctness (top-1 label, no probabilities); ``suspected`` (the policy on every query,
misinformation by default) is kept for strong evidence, or the operator's confirmation
(``same-accounts confirm``). Strong evidence is a statistic of ``strong_factor * h`` and a share
of per-query flags, *and* a pattern that a customer whose camera or scanner drifted does not
show: by their scores alone the two are the same (a blurred digit scores like an upscaled 8x8
one, a brighter scan like a JBDA query), so the score's strength cannot tell them apart.

- **The victim is unsure of the account's flagged queries**: their mean top-1 probability is
  below ``strong_max_confidence`` by ``strong_confidence_z`` standard errors. On shifts of
  the calibration split, digits the victim still answers at >= 0.85 kept a mean of 0.78-0.94
  on their flagged queries; 8x8 digits 0.67-0.68, photo crops 0.47-0.48, blurred font digits
  0.63-0.66. What such an account would lose is answers the victim gets wrong a third of the
  time anyway.
- **Lineage** (:mod:`.lineage`): at least ``strong_lineage_share`` of its flagged queries are a
  small step from an earlier query of the account or of another account under review
  (``accounts/lineage_pool.py``), the way JBDA builds its queries (97 % of them after its
  seed set; 6-15 % for honest digits).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np

# The columns of the ensemble's internal output (layout.ACCOUNT_OUTPUT), per query: its
# class-conditional p-value, the victim's predicted class, whether its own score was flagged
# and the victim's top-1 probability.
ACCOUNT_OUTPUT_WIDTH = 4
# Tiers of the answer to an account, weakest first: "" (normal), "review" (top-1 label only),
# "suspected" (the response policy on every query).
REVIEW = "review"
SUSPECTED = "suspected"
TIERS = ("", REVIEW, SUSPECTED)


@dataclass(frozen=True)
class AccountSettings:
    """The sequential test's parameters (defaults: what a build without references gets)."""

    levels: tuple[float, ...] = (0.05, 0.2, 0.5)
    # bounds[c][j]: upper bound of class c's honest rate of p <= levels[j] (from calibration);
    # empty or a class beyond them: twice each level, capped (class_bounds).
    bounds: tuple[tuple[float, ...], ...] = ()
    # Alternatives per level as lifts: q = u + lift * (1 - u).
    lifts: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
    h: float = 16.3  # alarm line: log(1,000 queries * 12 statistics / 1e-3)
    # Suspicion lasts this long unless the operator clears it first (0: until cleared).
    suspicion_ttl_s: float = 7 * 24 * 3600.0
    # Recent sample hashes remembered per account for de-duplication.
    dedupe_window: int = 50_000
    # Strong evidence (misinformation instead of review): statistic >= strong_factor * h and
    # a share of per-query flags >= strong_flag_share over the account's distinct queries.
    strong_factor: float = 2.0
    strong_flag_share: float = 0.25
    # How many distinct queries the flag share is counted over before it may count as strong.
    strong_min_queries: int = 50
    # ...and a pattern drift does not show (module docstring): the flagged queries' mean top-1
    # probability below strong_max_confidence, or at least strong_lineage_share of them near
    # an earlier query (lineage_tolerance of 255 per block, among the last lineage_window
    # distinct queries). strong_patterns False: statistic and flag share alone (before 2026-12).
    strong_max_confidence: float = 0.75
    # ...with this many standard errors to spare: the mean is looked at after every query,
    # and a running mean of 50 that dips below the line once would misinform for a week.
    strong_confidence_z: float = 2.33
    strong_lineage_share: float = 0.5
    lineage_tolerance: int = 40
    lineage_window: int = 2048
    # Sketches of every account under review, pooled (accounts/lineage_pool.py): lineage
    # across unrelated keys. 0: each account's own sketches only.
    lineage_pool: int = 8192
    strong_patterns: bool = True
    # A linked state's alarm (the caller's network or key group) applies to an account while
    # it is young (fewer distinct queries) or its own statistic is above elevated_factor * h;
    # an established account behind the same prefix (a company's NAT) keeps its answers.
    young_queries: int = 200
    elevated_factor: float = 0.5
    # graded: an alarm first costs information (review); False: every alarm is answered with
    # the response policy at once (the design before issue 18). auto_strong: strong evidence
    # escalates to the policy by itself; False: only the operator's confirmation does.
    graded: bool = True
    auto_strong: bool = True

    def __post_init__(self) -> None:
        if not self.levels or not all(0.0 < t < 1.0 for t in self.levels):
            raise ValueError(f"levels must lie in (0, 1), got {self.levels}")
        if list(self.levels) != sorted(self.levels):
            raise ValueError(f"levels must be increasing, got {self.levels}")
        if not self.lifts or not all(0.0 < v < 1.0 for v in self.lifts):
            raise ValueError(f"lifts must lie in (0, 1), got {self.lifts}")
        for row in self.bounds:
            if len(row) != len(self.levels) or not all(0.0 < u < 1.0 for u in row):
                raise ValueError(f"each class needs one bound in (0, 1) per level, got {row}")
        if self.h <= 0:
            raise ValueError(f"h must be positive, got {self.h}")
        if self.suspicion_ttl_s < 0 or self.dedupe_window < 0:
            raise ValueError("suspicion_ttl_s and dedupe_window must be >= 0")
        self._check_strong_rule()

    def _check_strong_rule(self) -> None:
        if self.strong_factor < 1.0 or not 0.0 <= self.strong_flag_share <= 1.0:
            raise ValueError("need strong_factor >= 1 and strong_flag_share in [0, 1]")
        if self.strong_confidence_z < 0:
            raise ValueError(f"strong_confidence_z must be >= 0, got {self.strong_confidence_z}")
        if not 0.0 < self.strong_lineage_share <= 1.0 or not 0.0 <= self.strong_max_confidence:
            raise ValueError("need strong_lineage_share in (0, 1] and strong_max_confidence >= 0")
        if (
            not 0 <= self.lineage_tolerance <= 255
            or min(self.lineage_window, self.lineage_pool) < 0
        ):
            raise ValueError("need lineage_tolerance in [0, 255], lineage_window and pool >= 0")

    @property
    def statistics(self) -> int:
        """How many CUSUMs the bank runs (levels x lifts)."""
        return len(self.levels) * len(self.lifts)

    def class_bounds(self, c: int) -> tuple[float, ...]:
        """Class ``c``'s honest rate bounds per level (a conservative default if unknown)."""
        if 0 <= c < len(self.bounds):
            return self.bounds[c]
        # Without calibration scores for the class: twice the nominal rate (capped), a guess
        # rather than a bound (the build always writes bounds; this serves hand-made settings
        # and evidence of unknown class).
        return tuple(min(0.95, 2.0 * t) for t in self.levels)

    @cached_property
    def _steps(self) -> tuple[np.ndarray, np.ndarray]:
        """Per class, per statistic: the CUSUM step when the query exceeds / does not."""
        classes = max(len(self.bounds), 1)
        up = np.zeros((classes + 1, self.statistics))
        down = np.zeros((classes + 1, self.statistics))
        for c in range(classes + 1):  # the last row: classes without bounds
            for j, u in enumerate(self.class_bounds(c if c < classes else -1)):
                for i, lift in enumerate(self.lifts):
                    q = u + lift * (1.0 - u)
                    k = j * len(self.lifts) + i
                    up[c, k], down[c, k] = math.log(q / u), math.log((1.0 - q) / (1.0 - u))
        return up, down

    def steps(self, pvalues: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """``[N, K]`` CUSUM increments of N queries (p-values and predicted classes)."""
        up, down = self._steps
        p = np.asarray(pvalues, np.float64).reshape(-1)
        c = np.asarray(predicted).reshape(-1).astype(np.int64)
        c = np.where((c >= 0) & (c < len(up) - 1), c, len(up) - 1)
        exceeds = p[:, None] <= np.repeat(np.asarray(self.levels), len(self.lifts))[None, :]
        return np.where(exceeds, up[c], down[c])

    def false_alarm_bound(self, queries: int) -> float:
        """Upper bound on P(an honest account is suspected within ``queries`` queries)."""
        return min(1.0, queries * self.statistics * math.exp(-self.h))

    def to_dict(self) -> dict:
        """The settings as a JSON-serialisable dict, the form the manifest stores."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, **overrides: float) -> AccountSettings:
        """Settings from ``data`` (unknown keys ignored), then ``overrides`` on top."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("levels", "lifts"):
            if name in known:
                known[name] = tuple(float(v) for v in known[name])
        if "bounds" in known:
            known["bounds"] = tuple(tuple(float(u) for u in row) for row in known["bounds"])
        return replace(cls(**known), **overrides)


@dataclass
class AccountState:
    """What the service remembers about one account (a few numbers, JSON-serialisable)."""

    queries: int = 0  # every sample answered
    distinct: int = 0  # samples that entered the test (repeats excluded)
    exceedances: int = 0  # distinct queries at or below the middle level
    flagged: int = 0  # distinct queries whose own score was above the per-query threshold
    # Over the flagged distinct queries: the victim's top-1 probabilities summed; of those whose
    # lineage was looked at (between alarm and strong evidence), how many, and how many were a
    # small step from an earlier query.
    flagged_confidence: float = 0.0
    flagged_confidence_sq: float = 0.0
    flagged_checked: int = 0
    flagged_near: int = 0
    cusum: float = 0.0  # the largest of the bank's statistics
    peak_cusum: float = 0.0
    statistics: list = field(default_factory=list)  # the bank's K statistics
    suspected_at_query: int = 0  # ``distinct`` when the alarm fired (0: not suspected)
    suspected_since: float = 0.0  # wall clock of the alarm
    strong_at_query: int = 0  # ``distinct`` when the evidence became strong (0: not yet)
    confirmed: bool = False  # the operator confirmed the suspicion: the policy applies
    held: bool = False  # alarm attributed to a population drift: listed, answered normally
    cleared: int = 0  # times the operator cleared a suspicion
    extra: dict = field(default_factory=dict)

    def is_suspected(self, now: float, settings: AccountSettings) -> bool:
        """Whether an alarm is in force at ``now``: fired, not cleared and not yet expired."""
        if self.suspected_at_query <= 0:
            return False
        ttl = settings.suspicion_ttl_s
        return ttl == 0 or now - self.suspected_since < ttl

    def tier(self, now: float, settings: AccountSettings) -> str:
        """How this account is answered now: "", "review" or "suspected" (see :data:`TIERS`)."""
        if not self.is_suspected(now, settings):
            return ""
        if self.confirmed:
            return SUSPECTED
        if self.held:  # a drift of many unrelated accounts: the operator decides
            return ""
        if not settings.graded or (settings.auto_strong and self.strong_at_query > 0):
            return SUSPECTED
        return REVIEW

    def wants_lineage(self, now: float, settings: AccountSettings) -> bool:
        """Whether the next request's lineage can still matter: in review, not yet strong.

        Lineage counts only between the alarm and strong evidence, so the store reads an
        account's sketches only then (every request still adds to them). A held account
        (a drift) is the operator's to decide, and an expired alarm is over: neither looks.
        """
        return (
            settings.strong_patterns
            and self.is_suspected(now, settings)
            and not self.held
            and not self.strong_at_query
        )

    def open_to_links(self, settings: AccountSettings) -> bool:
        """Whether a linked state's alarm applies to this account: young or elevated."""
        return (
            self.distinct < settings.young_queries
            or self.cusum >= settings.elevated_factor * settings.h
        )

    def to_dict(self) -> dict:
        """The state as a JSON-serialisable dict, the form the service stores."""
        # By hand, not dataclasses.asdict: its recursive deep copy was 60 % of the account
        # layer's time per request (the bank's list of statistics).
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["statistics"] = list(self.statistics)
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict | None) -> AccountState:
        """The state stored as ``data`` (unknown keys ignored); a new account's when empty."""
        if not data:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def combined_tier(
    own: AccountState, links: list[AccountState], now: float, settings: AccountSettings
) -> str:
    """The tier an account is answered at: its own, raised by its links' where they apply."""
    tier = own.tier(now, settings)
    # An account the operator cleared has been vouched for, and one whose alarm a drift holds
    # waits for the operator: its links (which saw the same queries) do not bind it.
    if links and own.open_to_links(settings) and own.cleared == 0 and not own.held:
        for link in links:
            linked = link.tier(now, settings)
            if TIERS.index(linked) > TIERS.index(tier):
                tier = linked
    return tier


def score_pvalues(
    scores: np.ndarray, predicted: np.ndarray, reference: list[np.ndarray]
) -> np.ndarray:
    """Class-conditional p-values: ``(1 + #{ref_c >= s}) / (n_c + 1)`` per query.

    ``reference[c]`` holds the calibration scores of the queries the victim predicted as
    ``c``, sorted ascending; a class without references gives p = 1 (never exceeds).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    predicted = np.asarray(predicted).reshape(-1)
    out = np.ones(len(scores), dtype=np.float64)
    for c in np.unique(predicted):
        rows = predicted == c
        ref = reference[int(c)] if 0 <= int(c) < len(reference) else np.zeros(0)
        if len(ref) == 0:
            continue
        at_or_above = len(ref) - np.searchsorted(ref, scores[rows], side="left")
        out[rows] = (1.0 + at_or_above) / (len(ref) + 1.0)
    return out


def strong_pattern(
    flagged: np.ndarray,
    confidence: np.ndarray,
    confidence_sq: np.ndarray,
    checked: np.ndarray,
    near: np.ndarray,
    settings: AccountSettings,
) -> np.ndarray:
    """Per query of a request: whether the account's flagged queries show a drift-free pattern.

    The patterns are in the module docstring. Arguments are running totals over the flagged
    queries: how many, their summed top-1 probability and its square, how many had their
    lineage looked at and how many of those were near an earlier query. "Unsure" needs the
    mean top-1 probability below ``strong_max_confidence`` by ``strong_confidence_z``
    standard errors (the spread floored at 0.1, so a handful of alike queries is not enough).
    """
    if not settings.strong_patterns:
        return np.ones(len(flagged), bool)
    n = np.maximum(flagged, 1)
    mean = confidence / n
    spread = np.sqrt(np.maximum(confidence_sq / n - mean**2, 0.01))
    unsure = mean + settings.strong_confidence_z * spread / np.sqrt(n) < (
        settings.strong_max_confidence
    )
    lineage = near >= settings.strong_lineage_share * np.maximum(checked, 1)
    return (flagged > 0) & (unsure | (checked > 0) & lineage)


def _columns(evidence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """p-values, predicted classes, flags and top-1 probabilities of ``evidence``.

    Older repositories wrote three columns (no probability: read as 0, "unsure", which keeps
    the strong rule they were built with) or bare ``[N]`` p-values (class -1, unflagged).
    """
    if evidence.ndim == 2 and evidence.shape[1] >= 3:
        width = evidence.shape[1]
        confidence = evidence[:, 3] if width >= ACCOUNT_OUTPUT_WIDTH else np.zeros(len(evidence))
        return evidence[:, 0], evidence[:, 1], evidence[:, 2] > 0.5, confidence
    pvalues = evidence.reshape(-1)
    n = len(pvalues)
    return pvalues, np.full(n, -1.0), np.zeros(n, bool), np.zeros(n)


def update_state(
    state: AccountState,
    evidence: np.ndarray,
    is_new: np.ndarray,
    settings: AccountSettings,
    now: float,
    near: np.ndarray | None = None,
) -> AccountState:
    """Feed one request's queries into the account's bank of CUSUMs; returns the new state.

    ``evidence`` is the ensemble's internal output, ``[N, 4]``: each query's class-conditional
    p-value, the victim's predicted class, its per-query flag and the victim's top-1
    probability (older layouts: :func:`_columns`). ``is_new[i]`` is False for a sample the
    account sent before (it is answered but does not enter the test). ``near[i]``: whether the
    query is a small step from an earlier one (:mod:`.lineage`; None: not looked at). Once
    suspected, the statistics keep counting but the alarm time stays.
    """
    evidence = np.asarray(evidence, dtype=np.float64)
    pvalues, predicted, flags, confidence = _columns(evidence)
    is_new = np.asarray(is_new, dtype=bool).reshape(-1)
    checked = np.full(len(pvalues), near is not None)
    near = np.zeros(len(pvalues), bool) if near is None else np.asarray(near, bool).reshape(-1)
    s = AccountState.from_dict(state.to_dict())
    s.queries += len(pvalues)
    stats = np.zeros(settings.statistics)
    if len(s.statistics) == settings.statistics:
        stats = np.asarray(s.statistics, np.float64)
    p, f = pvalues[is_new], flags[is_new]
    f_conf = np.where(f, confidence[is_new], 0.0)
    f_checked = f & checked[is_new]
    f_near = f & near[is_new]
    n = len(p)
    if n:
        # Page's recursion S_t = max(0, S_{t-1} + x_t) in closed form, for the whole request
        # at once: S_t = D_t - min(0, min_{k<=t} D_k) with D_t = S_0 + x_1 + ... + x_t.
        walk = stats[None, :] + np.cumsum(settings.steps(p, np.rint(predicted[is_new])), axis=0)
        path = walk - np.minimum(0.0, np.minimum.accumulate(walk, axis=0))
        top = path.max(axis=1)
        distinct = s.distinct + np.arange(1, n + 1)
        alarm_from: int | None = 0 if s.is_suspected(now, settings) else None
        if alarm_from is None:
            hits = np.flatnonzero(top >= settings.h)
            if len(hits):
                alarm_from = int(hits[0])
                s.suspected_at_query = int(distinct[alarm_from])
                s.suspected_since = now
        if alarm_from is not None and not s.strong_at_query:
            flagged_so_far = s.flagged + np.cumsum(f)
            strong = (
                (top >= settings.strong_factor * settings.h)
                & (distinct >= settings.strong_min_queries)
                & (flagged_so_far >= settings.strong_flag_share * distinct)
                & strong_pattern(
                    flagged_so_far,
                    s.flagged_confidence + np.cumsum(f_conf),
                    s.flagged_confidence_sq + np.cumsum(f_conf**2),
                    s.flagged_checked + np.cumsum(f_checked),
                    s.flagged_near + np.cumsum(f_near),
                    settings,
                )
            )
            strong[:alarm_from] = False
            hits = np.flatnonzero(strong)
            if len(hits):
                s.strong_at_query = int(distinct[hits[0]])
        s.peak_cusum = max(s.peak_cusum, float(top.max()))
        stats = path[-1]
        middle = settings.levels[len(settings.levels) // 2]
        s.distinct += n
        s.exceedances += int((p <= middle).sum())
        s.flagged += int(f.sum())
        s.flagged_confidence = round(s.flagged_confidence + float(f_conf.sum()), 6)
        s.flagged_confidence_sq = round(s.flagged_confidence_sq + float((f_conf**2).sum()), 6)
        s.flagged_checked += int(f_checked.sum())
        s.flagged_near += int(f_near.sum())
    s.statistics = [round(float(v), 6) for v in stats]
    s.cusum = float(stats.max()) if len(stats) else 0.0
    return s


def clear_suspicion(state: AccountState) -> AccountState:
    """The operator's pardon: the test starts again from zero."""
    s = AccountState.from_dict(state.to_dict())
    s.cusum = 0.0
    s.statistics = []
    s.suspected_since = 0.0
    s.suspected_at_query = 0
    s.strong_at_query = 0
    s.confirmed = False
    s.held = False
    s.cleared += 1
    return s


def confirm_suspicion(state: AccountState, now: float) -> AccountState:
    """The operator's confirmation: the account gets the response policy from now on."""
    s = AccountState.from_dict(state.to_dict())
    s.confirmed = True
    if s.suspected_at_query <= 0:
        s.suspected_at_query = max(s.distinct, 1)
    s.suspected_since = now
    return s


def account_evidence(
    pvalues: np.ndarray, predicted: np.ndarray, flagged: np.ndarray, confidence: np.ndarray
) -> np.ndarray:
    """The ``[N, 4]`` internal output: p-value, class, flag (0/1), victim's top-1 probability."""
    return np.stack(
        [
            np.asarray(pvalues, np.float64).reshape(-1),
            np.asarray(predicted, np.float64).reshape(-1),
            np.asarray(flagged, np.float64).reshape(-1),
            np.asarray(confidence, np.float64).reshape(-1),
        ],
        axis=1,
    )


def account_settings_from_manifest(manifest: dict | None) -> AccountSettings | None:
    """The account test's settings the build wrote, or None if it wrote none."""
    settings = ((manifest or {}).get("accounts") or {}).get("settings")
    return AccountSettings.from_dict(settings) if settings else None


def reference_from_manifest(manifest: dict) -> tuple[list[np.ndarray], AccountSettings] | None:
    """The per-class references and test settings the build wrote, or None if absent."""
    settings = account_settings_from_manifest(manifest)
    if settings is None:
        return None
    reference = [
        np.sort(np.asarray(r, dtype=np.float64)) for r in manifest["accounts"]["reference"]
    ]
    return reference, settings
