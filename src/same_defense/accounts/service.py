"""The account-level defense over a store: the one code path of the gateway and the evaluation.

Before a request: is the caller suspected (then every answer follows the response policy)?
After it: feed the request's class-conditional p-values to the caller's CUSUM
(``same_defense.core.accounts``), counting each distinct sample once.

When the store is down, ``on_store_error`` decides: ``"closed"`` refuses service
(:class:`AccountStateUnavailable`), ``"open"`` serves as if the account were not suspected and
records nothing (counted in :attr:`AccountService.store_errors`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from ..core.accounts import AccountSettings, AccountState, clear_suspicion, update_state
from .store import AccountStore, MemoryStore, StoreUnavailable

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


class AccountService:
    def __init__(
        self,
        settings: AccountSettings,
        store: AccountStore | None = None,
        on_store_error: str = "closed",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if on_store_error not in FAIL_MODES:
            raise ValueError(f"on_store_error must be one of {FAIL_MODES}, got {on_store_error!r}")
        self.settings = settings
        self.store = store if store is not None else MemoryStore(settings.dedupe_window)
        self.on_store_error = on_store_error
        self.clock = clock
        self.store_errors = 0
        # Called with (account, state) when an account becomes suspected (e.g. a metric).
        self.on_suspicion: list[Callable[[str, AccountState], None]] = []

    def _unavailable(self, exc: StoreUnavailable) -> None:
        self.store_errors += 1
        if self.on_store_error == "closed":
            raise AccountStateUnavailable(f"{exc} (failing closed)") from None
        log.warning("%s: failing open", exc)

    def is_suspected(self, account: str) -> bool:
        try:
            state = self.store.get(account)
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return False
        return state.is_suspected(self.clock(), self.settings)

    def record(self, account: str, pvalues: np.ndarray, hashes: list[str]) -> AccountState | None:
        """Feed one request into the account's test; the new state (None if failing open)."""
        now = self.clock()
        before: list[bool] = []

        def update(state: AccountState, is_new: np.ndarray) -> AccountState:
            before.append(state.is_suspected(now, self.settings))
            return update_state(state, pvalues, is_new, self.settings, now)

        try:
            state = self.store.record(account, hashes, update)
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return None
        if state.is_suspected(now, self.settings) and not before[-1]:
            for listener in self.on_suspicion:
                listener(account, state)
            log.warning(
                "account %s suspected at its distinct query %d (%d exceeded, CUSUM %.1f)",
                account,
                state.suspected_at_query,
                state.exceedances,
                state.cusum,
            )
        return state

    def serve(
        self, account: str, answer: Callable[[bool], tuple[T, np.ndarray, list[str]]]
    ) -> tuple[T, bool]:
        """Answer one request of ``account`` and feed it to the account's test.

        ``answer(suspected)`` computes the reply (with the policy on every query when
        ``suspected``) and returns ``(reply, p-values, sample hashes)``. If the alarm fires
        inside this very request, the request is answered again as suspected: otherwise a
        thief with more accounts than requests (each account sending one large batch) would
        never receive a policy answer. Returns ``(reply, answered_as_suspected)``.
        """
        suspected = self.is_suspected(account)
        reply, pvalues, hashes = answer(suspected)
        state = self.record(account, pvalues, hashes) if pvalues is not None else None
        if not suspected and state is not None and state.is_suspected(self.clock(), self.settings):
            reply, _, _ = answer(True)
            return reply, True
        return reply, suspected

    def clear(self, account: str) -> AccountState:
        state = clear_suspicion(self.store.get(account))
        self.store.put(account, state)
        return state

    def suspected(self) -> list[tuple[str, AccountState]]:
        now = self.clock()
        return [(a, s) for a, s in self.store.accounts() if s.is_suspected(now, self.settings)]
