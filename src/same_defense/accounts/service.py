"""The account-level defense over a store: the one code path of the gateway and the evaluation.

Before a request: at which tier is the caller answered ("", "review": top-1 labels only,
"suspected": the response policy on every query)? After it: feed the request's evidence
(class-conditional p-values, predicted classes, flags, top-1 probabilities) to the caller's
bank of CUSUMs (``same_defense.core.accounts``), counting each distinct sample once, and keep
its samples' lineage sketches (``same_defense.core.lineage``) for the strong-evidence rule.

When the store is down, ``on_store_error`` decides: ``"closed"`` refuses service
(:class:`AccountStateUnavailable`), ``"open"`` serves as if the account were not suspected and
records nothing (counted in :attr:`AccountService.store_errors`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

import numpy as np

from ..core.accounts import (
    SUSPECTED,
    TIERS,
    AccountSettings,
    AccountState,
    clear_suspicion,
    combined_tier,
    confirm_suspicion,
    update_state,
)
from ..core.lineage import SKETCH_SIZE, near_repeats
from .lineage_pool import LineagePool, MemoryLineagePool
from .links import is_link_state, link_state_name
from .population import PopulationMonitor
from .store import AccountStore, MemoryStore, StoreUnavailable, new_rows

FAIL_MODES = ("closed", "open")
T = TypeVar("T")
log = logging.getLogger("same.accounts")


class AccountStateUnavailable(RuntimeError):
    """Fail-closed: the account state cannot be read, so the request is not served."""


def sample_hashes(images: np.ndarray | bytes, count: int | None = None) -> list[str]:
    """A short hash per sample: of each row of an array, or of ``count`` equal byte chunks."""
    if isinstance(images, bytes | bytearray | memoryview):
        data = bytes(images)
        if not count or len(data) % count:
            raise ValueError("byte buffer does not split into the given number of samples")
        size = len(data) // count
        rows = [data[i * size : (i + 1) * size] for i in range(count)]
    else:
        arr = np.ascontiguousarray(images, dtype=np.float32)
        rows = [row.tobytes() for row in arr.reshape(len(arr), -1)]
    return [hashlib.blake2b(r, digest_size=12).hexdigest() for r in rows]


class Answered(NamedTuple, Generic[T]):
    """What :meth:`AccountService.serve`'s ``answer`` returns: the reply, the evidence (None:
    nothing to feed the test), each sample's hash and, where the caller has the images, each
    sample's lineage sketch."""

    reply: T
    evidence: np.ndarray | None
    hashes: list[str]
    sketches: np.ndarray | None = None


class AccountService:
    """The account-level defense over a store: tiers, links and the population monitor.

    ``links`` of a call (its network, its key's group; :mod:`.links`) have states of their
    own, fed with every query of every account behind them; ``population`` tells a drift of
    many unrelated accounts from theft (:mod:`.population`). ``population=None`` turns the
    drift hold off (every alarm is acted on). ``lineage_pool`` holds the sketches of accounts
    under review (:mod:`.lineage_pool`; default: in memory, ``settings.lineage_pool`` long).
    """

    def __init__(
        self,
        settings: AccountSettings,
        store: AccountStore | None = None,
        on_store_error: str = "closed",
        clock: Callable[[], float] = time.time,
        population: PopulationMonitor | None = None,
        lineage_pool: LineagePool | None = None,
    ) -> None:
        if on_store_error not in FAIL_MODES:
            raise ValueError(f"on_store_error must be one of {FAIL_MODES}, got {on_store_error!r}")
        self.settings = settings
        self.store = store if store is not None else MemoryStore(settings.dedupe_window)
        self.on_store_error = on_store_error
        self.clock = clock
        self.population = population
        if lineage_pool is None and settings.strong_patterns and settings.lineage_pool > 0:
            lineage_pool = MemoryLineagePool(settings.lineage_pool)
        self.lineage_pool = lineage_pool
        self.store_errors = 0
        # Called with (account, state) when an account becomes suspected (e.g. a metric).
        self.on_suspicion: list[Callable[[str, AccountState], None]] = []
        # Called with (accounts held, time) when the population monitor raises the drift alert.
        self.on_drift: list[Callable[[list[str], float], None]] = []

    def _unavailable(self, exc: StoreUnavailable) -> None:
        self.store_errors += 1
        if self.on_store_error == "closed":
            raise AccountStateUnavailable(f"{exc} (failing closed)") from None
        log.warning("%s: failing open", exc)

    def is_suspected(self, account: str) -> bool:
        return bool(self.tier(account))

    def tier(self, account: str, links: tuple[str, ...] = ()) -> str:
        """How ``account`` (calling with ``links``) is answered now: "", "review", "suspected"."""
        try:
            own = self.store.get(account)
            linked = [self.store.get(link_state_name(link)) for link in links]
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return ""
        return combined_tier(own, linked, self.clock(), self.settings)

    def _update(
        self,
        name: str,
        evidence: np.ndarray,
        hashes: list[str],
        sketches: np.ndarray | None,
        now: float,
        pooled: Callable[[], np.ndarray],
        to_pool: dict[bytes, None],
    ):
        """One state's update; the sketches it adds to the lineage pool go to ``to_pool``
        (one request's, account and links together: a row enters the pool once)."""
        before: list[AccountState] = []
        mine: list[bytes] = []
        settings = self.settings

        def update(state: AccountState, is_new: np.ndarray, past) -> AccountState:
            before.append(state)
            mine.clear()  # a retried transaction starts again
            near = None
            # Lineage matters only between the alarm and strong evidence: read the kept
            # sketches (and the pool) only then.
            if sketches is not None and state.wants_lineage(now, settings):
                earlier = np.concatenate([past(), pooled()])
                near = near_repeats(sketches, earlier, settings.lineage_tolerance)
            new = update_state(state, evidence, is_new, settings, now, near)
            if (
                sketches is not None
                and self.lineage_pool is not None
                and new.wants_lineage(now, settings)
            ):
                if not state.wants_lineage(now, settings):  # the alarm fired in this request
                    mine.extend(row.tobytes() for row in past())
                mine.extend(new_rows(sketches, is_new, settings.lineage_pool))
            return new

        keep = settings.lineage_window if settings.strong_patterns else 0
        state = self.store.record(name, hashes, update, sketches, keep)
        to_pool.update(dict.fromkeys(mine))
        return before[-1], state

    def _pooled(self) -> Callable[[], np.ndarray]:
        """The pool's sketches, read at most once per request (account and links alike)."""
        cache: list[np.ndarray] = []

        def read() -> np.ndarray:
            if not cache:
                empty = np.zeros((0, SKETCH_SIZE), np.uint8)
                cache.append(self.lineage_pool.read() if self.lineage_pool is not None else empty)
            return cache[0]

        return read

    def record(
        self,
        account: str,
        evidence: np.ndarray,
        hashes: list[str],
        links: tuple[str, ...] = (),
        sketches: np.ndarray | None = None,
    ) -> AccountState | None:
        """Feed one request into the account's test and its links'; the account's new state
        (None if failing open). ``sketches``: the samples' lineage sketches, if known."""
        recorded = self._record(account, evidence, hashes, links, sketches)
        return None if recorded is None else recorded[0]

    def _record(
        self,
        account: str,
        evidence: np.ndarray,
        hashes: list[str],
        links: tuple[str, ...],
        sketches: np.ndarray | None = None,
    ) -> tuple[AccountState, list[AccountState]] | None:
        """:meth:`record`, also returning the links' new states (no second read for the tier)."""
        now = self.clock()
        pooled, to_pool = self._pooled(), {}
        try:
            before, state = self._update(account, evidence, hashes, sketches, now, pooled, to_pool)
            linked = [
                self._update(
                    link_state_name(link), evidence, hashes, sketches, now, pooled, to_pool
                )[1]
                for link in links
            ]
            if to_pool and self.lineage_pool is not None:
                self.lineage_pool.add(list(to_pool)[-self.settings.lineage_pool :])
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return None
        fired = state.is_suspected(now, self.settings) and not before.is_suspected(
            now, self.settings
        )
        if fired:
            state = self._on_alarm(account, state, links, now)
        if state.tier(now, self.settings) == SUSPECTED and (
            before.tier(now, self.settings) != SUSPECTED
        ):
            log.warning(
                "account %s: strong evidence at its distinct query %d (%d of %d flagged): "
                "answered with the response policy from now on",
                account,
                state.strong_at_query or state.distinct,
                state.flagged,
                state.distinct,
            )
        return state, linked

    def _on_alarm(
        self, account: str, state: AccountState, links: tuple[str, ...], now: float
    ) -> AccountState:
        """An account's own test fired: tell the listeners, and the population monitor.

        Only an *established* account's alarm counts towards a drift (more than
        ``young_queries`` distinct queries when it fired): a drift changes the data of
        customers who were there before it, while a swarm of new keys is what a thief buys.
        """
        established = state.suspected_at_query > self.settings.young_queries
        if (
            established
            and self.population is not None
            and self.population.alarm(account, links, now)
        ):
            held = self._hold_recent(now)
            state = self.store.get(account)
            for listener in self.on_drift:
                listener(held, now)
        for listener in self.on_suspicion:
            listener(account, state)
        log.warning(
            "account %s %s at its distinct query %d (%d exceeded, statistic %.1f)",
            account,
            "held (population drift)" if state.held else "under review",
            state.suspected_at_query,
            state.exceedances,
            state.cusum,
        )
        return state

    def _hold_recent(self, now: float) -> list[str]:
        """Drift: hold every recent alarm the operator has not confirmed."""
        assert self.population is not None
        held = []
        for account in self.population.recent_accounts(now):
            state = self.store.get(account)
            if state.is_suspected(now, self.settings) and not state.confirmed:
                if not state.held:
                    state.held = True
                    self.store.put(account, state)
                held.append(account)
        if held:
            log.warning(
                "population drift: %d unrelated accounts alarmed within %.0f s; %d alarms held "
                "(answered normally, listed for the operator): the traffic has drifted from "
                "the calibration data",
                self.population.drift_accounts,
                self.population.window_s,
                len(held),
            )
        return held

    def serve(
        self,
        account: str,
        answer: Callable[[str], tuple],
        links: tuple[str, ...] = (),
    ) -> tuple[T, str]:
        """Answer one request of ``account`` and feed it to the account's test.

        ``answer(tier)`` computes the reply for the account's tier ("", "review" or
        "suspected") and returns an :class:`Answered` (or the same fields as a tuple: reply,
        evidence, sample hashes and optionally sketches). If this very request
        raises the account's tier, it is answered again at the new tier: otherwise a thief
        with more accounts than requests (each account sending one large batch) would never
        receive a policy answer. Returns ``(reply, tier it was answered at)``.
        """
        tier = self.tier(account, links)
        reply, evidence, hashes, sketches = Answered(*answer(tier))
        if evidence is None:
            return reply, tier
        recorded = self._record(account, evidence, hashes, links, sketches)
        if recorded is None:
            return reply, tier
        now_tier = combined_tier(*recorded, self.clock(), self.settings)
        if TIERS.index(now_tier) > TIERS.index(tier):
            return Answered(*answer(now_tier)).reply, now_tier
        return reply, tier

    def clear(self, account: str) -> AccountState:
        state = clear_suspicion(self.store.get(account))
        self.store.put(account, state)
        return state

    def confirm(self, account: str) -> AccountState:
        """The operator confirms a suspicion: the response policy from the next request on."""
        state = confirm_suspicion(self.store.get(account), self.clock())
        self.store.put(account, state)
        return state

    def suspected(self) -> list[tuple[str, AccountState]]:
        """Accounts whose alarm is in force (held ones included: the operator sees them)."""
        now = self.clock()
        return [
            (a, s)
            for a, s in self.store.accounts()
            if not is_link_state(a) and s.is_suspected(now, self.settings)
        ]
