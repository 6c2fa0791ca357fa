"""The lineage sketches of every account under review, pooled: lineage across unrelated keys.

An account's own sketches (``core/lineage.py``) see a JBDA thief who sends a query and its
parent from one key. A thief who has read that spreads its requests at random over unrelated
keys: with ten keys, nine in ten of a query's parents sit in another key, and its own share of
near queries falls to about a tenth (measured: the clone went from 0.10 to 0.91). The keys are
unrelated, but while each is under review they have one thing in common: they send steps of
each other's queries. So every account in review adds its sketches to one pool (at its alarm,
the ones it kept before; then each request's), and a reviewed account's lineage is looked up
against its own sketches *and* the pool.

Honest customers in review (a new camera, a false alarm) send their own digits: another
customer's digit is as far from them as any other (measured in ``make evaluate``: shifted new
customers, ten at once, reviewed together).

With ``--redis`` the pool is one list that every gateway shares (``same:lineage:pool``), read
and written outside the account's transaction: it is evidence, not state, and a sketch that
arrives a request late changes nothing that matters.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

import numpy as np

from .store import RedisBacked, as_sketches


class LineagePool(Protocol):
    def add(self, rows: list[bytes]) -> None: ...

    def read(self) -> np.ndarray:
        """The pooled sketches, ``uint8 [M, SKETCH_SIZE]``, oldest first."""
        ...


class MemoryLineagePool:
    """One gateway's pool: the last ``size`` sketches of accounts under review."""

    def __init__(self, size: int = 8192) -> None:
        self._rows: deque[bytes] = deque(maxlen=max(size, 1))
        self._lock = threading.Lock()

    def add(self, rows: list[bytes]) -> None:
        with self._lock:
            self._rows.extend(rows)

    def read(self) -> np.ndarray:
        with self._lock:
            return as_sketches(list(self._rows))


class RedisLineagePool(RedisBacked):
    """Every gateway's pool on one Redis: the list ``key`` (hex rows), ``size`` at most."""

    def __init__(
        self, url: str, key: str = "same:lineage:pool", size: int = 8192, timeout_s: float = 1.0
    ) -> None:
        super().__init__(url, "lineage pool", timeout_s)
        self.key, self.size = key, max(size, 1)

    def add(self, rows: list[bytes]) -> None:
        if not rows:
            return

        def push() -> None:
            with self.client.pipeline() as pipe:
                pipe.rpush(self.key, *(r.hex() for r in rows))
                pipe.ltrim(self.key, -self.size, -1)
                pipe.execute()

        self._call(push)

    def read(self) -> np.ndarray:
        rows = self._call(lambda: self.client.lrange(self.key, 0, -1))
        return as_sketches([bytes.fromhex(r) for r in rows])
