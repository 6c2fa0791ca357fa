"""Where account state lives: in this process (one gateway) or in Redis (several gateways).

Both stores offer one atomic operation, :meth:`AccountStore.record`: find which of a request's
samples the account sent before, add them to its remembered set, and apply an update function
(the core's CUSUM step) to its state. The update may ask for the account's recent lineage
sketches (``core/lineage.py``); the request's new ones are kept after it, ``keep_sketches`` at
most. The statistic is computed in Python on both (Redis runs
no script of ours), so there is one implementation of the test; Redis gets atomicity from an
optimistic transaction (WATCH / MULTI) that is retried when another gateway wrote first.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from ..core.accounts import AccountState
from ..core.lineage import SKETCH_SIZE

# update(state, is_new, past): the new state; ``past()`` returns the account's kept sketches,
# ``uint8 [M, SKETCH_SIZE]`` oldest first, read only if the update calls it.
Past = Callable[[], np.ndarray]
Update = Callable[[AccountState, np.ndarray, Past], AccountState]


class StoreUnavailable(RuntimeError):
    """The state store cannot be reached (Redis down, network partition)."""


class RedisBacked:
    """A Redis client (strings in and out) whose connection errors and timeouts become
    :class:`StoreUnavailable` naming ``what``: the state store, the population's alarms and
    the lineage pool all fail the same way."""

    def __init__(self, url: str, what: str, timeout_s: float = 1.0) -> None:
        import redis  # only where Redis is used

        self.url = url
        self._what = what
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )

    def _call(self, fn: Callable):
        try:
            return fn()
        except self._errors as exc:
            raise StoreUnavailable(f"{self._what} at {self.url} unavailable: {exc}") from None


def first_occurrences(hashes: list[str]) -> np.ndarray:
    """True for the first occurrence of each hash within one request."""
    seen: set[str] = set()
    mask = np.zeros(len(hashes), bool)
    for i, h in enumerate(hashes):
        if h not in seen:
            seen.add(h)
            mask[i] = True
    return mask


def as_sketches(rows: list[bytes]) -> np.ndarray:
    """Kept sketch rows as ``uint8 [M, SKETCH_SIZE]``."""
    return np.frombuffer(b"".join(rows), np.uint8).reshape(-1, SKETCH_SIZE)


def new_rows(sketches: np.ndarray | None, is_new: np.ndarray, keep: int) -> list[bytes]:
    """The rows of a request's sketches to keep: its new samples', the last ``keep`` at most."""
    if sketches is None or keep <= 0:
        return []
    rows = np.asarray(sketches, np.uint8).reshape(len(is_new), SKETCH_SIZE)[is_new]
    return [row.tobytes() for row in rows[-keep:]]


class AccountStore(Protocol):
    def get(self, account: str) -> AccountState: ...

    def put(self, account: str, state: AccountState) -> None: ...

    def record(
        self,
        account: str,
        hashes: list[str],
        update: Update,
        sketches: np.ndarray | None = None,
        keep_sketches: int = 0,
    ) -> AccountState: ...

    def accounts(self) -> Iterator[tuple[str, AccountState]]: ...


class MemoryStore:
    """State in a dict; ``dedupe_window`` recent hashes per account. Thread-safe."""

    def __init__(self, dedupe_window: int = 50_000) -> None:
        self.dedupe_window = dedupe_window
        self._lock = threading.Lock()
        self._states: dict[str, AccountState] = {}
        self._seen: dict[str, OrderedDict[str, None]] = {}
        self._sketches: dict[str, deque[bytes]] = {}

    def get(self, account: str) -> AccountState:
        with self._lock:
            return AccountState.from_dict(self._states.get(account, AccountState()).to_dict())

    def put(self, account: str, state: AccountState) -> None:
        with self._lock:
            self._states[account] = state

    def record(
        self,
        account: str,
        hashes: list[str],
        update: Update,
        sketches: np.ndarray | None = None,
        keep_sketches: int = 0,
    ) -> AccountState:
        with self._lock:
            seen = self._seen.setdefault(account, OrderedDict())
            is_new = first_occurrences(hashes) & np.array([h not in seen for h in hashes], bool)
            for h in hashes:
                seen[h] = None
                seen.move_to_end(h)
            while len(seen) > self.dedupe_window:
                seen.popitem(last=False)
            kept = self._sketches.get(account)
            state = update(
                self._states.get(account, AccountState()),
                is_new,
                lambda: as_sketches(list(kept or ())),
            )
            self._states[account] = state
            rows = new_rows(sketches, is_new, keep_sketches)
            if rows:
                if kept is None or kept.maxlen != keep_sketches:
                    kept = self._sketches[account] = deque(kept or (), maxlen=keep_sketches)
                kept.extend(rows)
            return state

    def accounts(self) -> Iterator[tuple[str, AccountState]]:
        with self._lock:
            items = list(self._states.items())
        yield from items


class RedisStore(RedisBacked):
    """State in Redis: ``<prefix>:{<account>}:state`` (JSON), ``<prefix>:{<account>}:seen``
    (a set of sample hashes) and ``<prefix>:{<account>}:sketch`` (a list of lineage sketches,
    hex), all expiring ``ttl_s`` after the account's last query.

    The braces are a Redis Cluster hash tag: both keys of an account hash to one slot, so the
    transaction that watches and writes both is allowed there. Keys written before the tags
    (``<prefix>:<account>:state``) are still read until :meth:`migrate_legacy_keys` renames
    them (``same-accounts migrate-keys``; docs/operations.md).
    """

    def __init__(
        self,
        url: str,
        prefix: str = "same:acct",
        ttl_s: int = 30 * 24 * 3600,
        timeout_s: float = 1.0,
    ) -> None:
        import redis  # only where Redis is used

        super().__init__(url, "account state store", timeout_s)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._watch_error = redis.exceptions.WatchError

    def _keys(self, account: str) -> tuple[str, str]:
        return f"{self.prefix}:{{{account}}}:state", f"{self.prefix}:{{{account}}}:seen"

    def _sketch_key(self, account: str) -> str:
        return f"{self.prefix}:{{{account}}}:sketch"

    def _legacy_keys(self, account: str) -> tuple[str, str]:
        return f"{self.prefix}:{account}:state", f"{self.prefix}:{account}:seen"

    def get(self, account: str) -> AccountState:
        new, old = self._keys(account)[0], self._legacy_keys(account)[0]
        raw = self._call(lambda: self.client.get(new) or self.client.get(old))
        return AccountState.from_dict(json.loads(raw) if raw else None)

    def put(self, account: str, state: AccountState) -> None:
        key = self._keys(account)[0]
        self._call(lambda: self.client.set(key, json.dumps(state.to_dict()), ex=self.ttl_s))

    def record(
        self,
        account: str,
        hashes: list[str],
        update: Update,
        sketches: np.ndarray | None = None,
        keep_sketches: int = 0,
    ) -> AccountState:
        state_key, seen_key = self._keys(account)
        sketch_key = self._sketch_key(account)
        legacy_state = self._legacy_keys(account)[0]

        def transaction() -> AccountState:
            with self.client.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(state_key, seen_key, sketch_key)
                        raw = pipe.get(state_key) or pipe.get(legacy_state)
                        known = pipe.smismember(seen_key, hashes) if hashes else []
                        is_new = first_occurrences(hashes) & ~np.array(known, bool)

                        def past() -> np.ndarray:
                            rows = pipe.lrange(sketch_key, 0, -1)
                            return as_sketches([bytes.fromhex(r) for r in rows])

                        state = update(
                            AccountState.from_dict(json.loads(raw) if raw else None),
                            is_new,
                            past,
                        )
                        rows = new_rows(sketches, is_new, keep_sketches)
                        pipe.multi()
                        pipe.set(state_key, json.dumps(state.to_dict()), ex=self.ttl_s)
                        if hashes:
                            pipe.sadd(seen_key, *hashes)
                            pipe.expire(seen_key, self.ttl_s)
                        if rows:
                            pipe.rpush(sketch_key, *(r.hex() for r in rows))
                            pipe.ltrim(sketch_key, -keep_sketches, -1)
                            pipe.expire(sketch_key, self.ttl_s)
                        pipe.execute()
                        return state
                    except self._watch_error:
                        continue  # another gateway updated this account first: redo

        return self._call(transaction)

    def _state_keys(self) -> dict[str, str]:
        """``{account: its state key}``, a tagged key preferred over a legacy one."""
        pattern = f"{self.prefix}:*:state"
        keys = self._call(lambda: list(self.client.scan_iter(match=pattern, count=500)))
        found: dict[str, str] = {}
        for key in sorted(keys, key=lambda k: "{" in k):  # tagged last: they win
            name = key[len(self.prefix) + 1 : -len(":state")]
            if name.startswith("{") and name.endswith("}"):
                name = name[1:-1]
            found[name] = key
        return found

    def accounts(self) -> Iterator[tuple[str, AccountState]]:
        for name, key in self._state_keys().items():
            raw = self._call(lambda k=key: self.client.get(k))
            if raw:
                yield name, AccountState.from_dict(json.loads(raw))

    def migrate_legacy_keys(self) -> int:
        """Rename keys written before the hash tags to the tagged names; returns how many
        accounts moved. On one Redis (not a cluster), with the gateways upgraded first."""
        moved = 0
        for name, key in self._state_keys().items():
            if "{" in key:
                continue
            for old, new in zip(self._legacy_keys(name), self._keys(name), strict=True):
                # RENAMENX: never overwrite state a new gateway already wrote under the tag.
                self._call(
                    lambda o=old, n=new: self.client.exists(o) and self.client.renamenx(o, n)
                )
            moved += 1
        return moved
