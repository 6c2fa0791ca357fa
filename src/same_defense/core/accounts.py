"""Account-level detection: a sequential test on each account's SAME scores.

SAME scores one query at a time. A thief whose single queries look nearly benign (digits from
another source) still shifts the *distribution* of its scores, which a per-account test sees.
Three parts, all numpy-only so that the Triton step, the gateway and the offline evaluation run
the same code:

1. **Class-conditional p-values** (:func:`score_pvalues`). Scores differ by predicted class
   (the median per class ranged from 0.5x to 1.6x the overall median), so an honest user who
   sends one class would look anomalous against a global reference. Each score is ranked
   against the calibration scores of the same predicted class:
   ``p = (1 + #{reference >= score}) / (n_c + 1)``, uniform-or-larger for honest queries.
2. **Exceedances.** A query *exceeds* when ``p <= level`` (default 0.2). For honest traffic
   the exceedance rate is about ``level`` per class; the reference is finite (about 75
   calibration images per class on the default build), so the build stores ``p0``, an upper
   confidence bound of that rate over every class (a Beta quantile), not ``level`` itself.
3. **CUSUM** (Page's test) of the Bernoulli log-likelihood ratio between ``p0`` and ``p1``
   (the rate of a thief) over the account's *distinct* queries: ``S = max(0, S + llr)``,
   suspected when ``S >= h``. Under honest traffic with any rate <= ``p0`` the likelihood ratio
   is a supermartingale, so ``P(alarm within n queries) <= n * exp(-h)`` (Ville's inequality
   and a union over start points); ``h = log(n / delta)`` gives the stated false-alarm bound.
   Repeated images count once (the gateway hashes each sample), so an honest user who resends
   the same image cannot drift the test, and neither can a thief by repetition.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

# The ensemble's internal output (the p-value of each query) and the request parameter by
# which the gateway tells the defense step that the caller's account is suspected. Only the
# gateway may use either: it requests and strips the output, and overwrites the parameter.
ACCOUNT_OUTPUT = "ACCOUNT_PVALUE"
ACCOUNT_PARAMETER = "same_account_state"
SUSPECTED = "suspected"


@dataclass(frozen=True)
class AccountSettings:
    """The sequential test's parameters (defaults: the values the build writes)."""

    level: float = 0.2  # a query exceeds when its class-conditional p-value <= level
    p0: float = 0.36  # honest exceedance rate, upper bound over classes (from calibration)
    # Exceedance rate of a thief the test is tuned to detect quickly. Measured on the default
    # build: 0.96 for the 8x8 digits, 0.89 for natural crops, 0.37 for the worst honest class.
    p1: float = 0.8
    h: float = 13.8  # CUSUM alarm line: log(1,000 queries / 1e-3)
    # Suspicion lasts this long unless the operator clears it first (0: until cleared).
    suspicion_ttl_s: float = 7 * 24 * 3600.0
    # Recent sample hashes remembered per account for de-duplication.
    dedupe_window: int = 50_000

    def __post_init__(self) -> None:
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if not 0.0 < self.p0 < self.p1 < 1.0:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={self.p0}, p1={self.p1}")
        if self.h <= 0:
            raise ValueError(f"h must be positive, got {self.h}")
        if self.suspicion_ttl_s < 0 or self.dedupe_window < 0:
            raise ValueError("suspicion_ttl_s and dedupe_window must be >= 0")

    @property
    def step_up(self) -> float:
        """CUSUM increment for an exceeding query."""
        return math.log(self.p1 / self.p0)

    @property
    def step_down(self) -> float:
        """CUSUM increment (negative) for a query that does not exceed."""
        return math.log((1.0 - self.p1) / (1.0 - self.p0))

    def false_alarm_bound(self, queries: int) -> float:
        """Upper bound on P(an honest account is suspected within ``queries`` queries)."""
        return min(1.0, queries * math.exp(-self.h))

    def to_dict(self) -> dict:
        """The settings as a JSON-serialisable dict, the form the manifest stores."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, **overrides: float) -> AccountSettings:
        """Settings from ``data`` (unknown keys ignored), then ``overrides`` on top."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return replace(cls(**known), **overrides)


@dataclass
class AccountState:
    """What the service remembers about one account (a few numbers, JSON-serialisable)."""

    queries: int = 0  # every sample answered
    distinct: int = 0  # samples that entered the test (repeats excluded)
    exceedances: int = 0
    cusum: float = 0.0
    peak_cusum: float = 0.0
    suspected_at_query: int = 0  # ``distinct`` when the alarm fired (0: not suspected)
    suspected_since: float = 0.0  # wall clock of the alarm
    cleared: int = 0  # times the operator cleared a suspicion
    extra: dict = field(default_factory=dict)

    def is_suspected(self, now: float, settings: AccountSettings) -> bool:
        """Whether an alarm is in force at ``now``: fired, not cleared and not yet expired."""
        if self.suspected_at_query <= 0:
            return False
        ttl = settings.suspicion_ttl_s
        return ttl == 0 or now - self.suspected_since < ttl

    def to_dict(self) -> dict:
        """The state as a JSON-serialisable dict, the form the service stores."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> AccountState:
        """The state stored as ``data`` (unknown keys ignored); a new account's when empty."""
        if not data:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


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


def update_state(
    state: AccountState,
    pvalues: np.ndarray,
    is_new: np.ndarray,
    settings: AccountSettings,
    now: float,
) -> AccountState:
    """Feed one request's queries into the account's CUSUM; returns the new state.

    ``is_new[i]`` is False for a sample the account sent before (it is answered but does not
    enter the test). Once suspected, the statistics keep counting but the alarm time stays.
    """
    pvalues = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    is_new = np.asarray(is_new, dtype=bool).reshape(-1)
    s = AccountState.from_dict(state.to_dict())
    s.queries += len(pvalues)
    up, down = settings.step_up, settings.step_down
    for exceeds in pvalues[is_new] <= settings.level:
        s.distinct += 1
        s.exceedances += int(exceeds)
        s.cusum = max(0.0, s.cusum + (up if exceeds else down))
        s.peak_cusum = max(s.peak_cusum, s.cusum)
        if s.cusum >= settings.h and not s.is_suspected(now, settings):
            s.suspected_at_query = s.distinct
            s.suspected_since = now
    return s


def clear_suspicion(state: AccountState) -> AccountState:
    """The operator's pardon: the test starts again from zero."""
    s = AccountState.from_dict(state.to_dict())
    s.cusum = 0.0
    s.suspected_since = 0.0
    s.suspected_at_query = 0
    s.cleared += 1
    return s


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
