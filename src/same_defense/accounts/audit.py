"""The audit trail: one JSON line per change of an account's standing.

Events: ``suspected`` (the account test fired), ``escalated`` (a graded response moved the
account to a stronger tier), ``confirmed`` and ``cleared`` (an operator confirmed or lifted a
suspicion), ``expired`` (a suspicion outlived ``suspicion_ttl_s``; noticed at the account's
next request), ``key_added`` and ``key_revoked`` (seen when the gateway reloads its key file,
whoever edited it). Each line carries the time, the account, the gateway that saw it, the
account's counts so far, its whole statistic (``AccountState.to_dict()``, whatever fields it
has), the test's settings and the response policy: what a provider hands to a customer who
disputes a suspicion.

The file is rotated (:class:`logging.handlers.RotatingFileHandler`); with Redis every event
also goes to a capped stream (``XADD ... MAXLEN ~``) so that several gateways share one trail.
``same-accounts events`` reads either.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from ..core.accounts import AccountSettings, AccountState
from .store import AccountStore, Update

DEFAULT_AUDIT_LOG = Path("logs/audit.jsonl")
AUDIT_STREAM = "same:audit"
STREAM_MAXLEN = 100_000  # events kept in the shared stream (approximate trim)
EVENTS = (
    "drift",  # many unrelated established accounts alarmed together: their alarms are held
    "suspected",
    "escalated",
    "confirmed",
    "cleared",
    "expired",
    "key_added",
    "key_revoked",
)

log = logging.getLogger("same.audit")


def default_gateway_id() -> str:
    """Which gateway wrote an event: the pod name in Kubernetes (HOSTNAME), else host:pid."""
    return os.environ.get("SAME_GATEWAY_ID") or f"{socket.gethostname()}:{os.getpid()}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


@dataclass
class AuditLog:
    """Writes events to a rotated JSON-lines file and, with ``redis_url``, a Redis stream."""

    path: Path | None = DEFAULT_AUDIT_LOG
    gateway: str = ""
    settings: dict | None = None  # the account test's settings, repeated in every event
    # The response policy the ensemble applies, or a function that asks Triton for it.
    policy: str | Callable[[], str | None] | None = None
    redis_url: str | None = None
    # The account's group (customer record) where the key file keeps one (KeyStore.group_of).
    group_of: Callable[[str], str | None] | None = None
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.gateway = self.gateway or default_gateway_id()
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None
        if self.path is not None:
            self.path = Path(self.path)
        self._redis = None
        if self.redis_url:
            import redis  # only where Redis is used

            self._redis = redis.Redis.from_url(
                self.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )

    def event(
        self, kind: str, account: str, state: AccountState | None = None, **extra: object
    ) -> dict:
        """Record one event; returns what was written. Never raises: the audit trail must not
        take the request path down (a failed write is logged, and counted by the caller's
        metrics through the warning)."""
        now = self.clock()
        record: dict = {"time": _iso(now), "ts": round(now, 3), "event": kind}
        record["account"] = account
        group = self._group(account)
        if group is not None:
            record["group"] = group
        record["gateway"] = self.gateway
        if state is not None:
            stats = state.to_dict()
            record.update(distinct=stats.get("distinct"), queries=stats.get("queries"))
            record["statistic"] = stats
        if self.settings is not None:
            record["settings"] = self.settings
        policy = self.policy() if callable(self.policy) else self.policy
        if policy is not None:
            record["policy"] = policy
        record.update(extra)
        line = json.dumps(record, sort_keys=False, default=str)
        with self._lock:
            if self.path is not None:
                self._write(line)
        self._publish(line)
        return record

    def _group(self, account: str) -> str | None:
        if self.group_of is None:
            return None
        try:
            return self.group_of(account)
        except Exception:  # a broken key file must not lose the event
            return None

    def _write(self, line: str) -> None:
        try:
            if self._handler is None:  # opened at the first event: a quiet gateway writes nothing
                assert self.path is not None
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handler = logging.handlers.RotatingFileHandler(
                    self.path, maxBytes=self.max_bytes, backupCount=self.backups, encoding="utf-8"
                )
            self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
        except Exception as exc:  # a full disk must not fail inference
            log.warning("audit log %s: %s", self.path, exc)

    def _publish(self, line: str) -> None:
        if self._redis is None:
            return
        try:
            self._redis.xadd(AUDIT_STREAM, {"event": line}, maxlen=STREAM_MAXLEN, approximate=True)
        except Exception as exc:  # Redis down: the file still has it
            log.warning("audit stream %s: %s", AUDIT_STREAM, exc)

    def suspected(self, account: str, state: AccountState, **extra: object) -> None:
        """An :attr:`AccountService.on_suspicion` listener (``extra``: e.g. the tier)."""
        self.event(
            "suspected", account, state, suspected_at_query=state.suspected_at_query, **extra
        )

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
        if self._redis is not None:
            self._redis.close()


class ExpiryWatch:
    """A store wrapper that sees an account's standing change where no listener does.

    A suspicion ends by the clock (``suspicion_ttl_s``) without any write, so nothing else
    sees it end: before each update this looks at the stored state, and an alarm that fired
    but is no longer in force has ``expired`` (logged once per alarm and gateway, at the
    account's next request). Where the state has graded tiers (``AccountState.tier``), a
    rise from one non-empty tier to another is logged as ``escalated``; the first alarm is
    the service's ``on_suspicion`` (``suspected``). Every other call goes to the wrapped
    store unchanged.
    """

    def __init__(
        self,
        store: AccountStore,
        settings: AccountSettings,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.audit = audit
        self.clock = clock
        self._logged: set[tuple[str, float]] = set()

    def __getattr__(self, name: str):
        return getattr(self.store, name)  # e.g. RedisStore.client, .url

    def get(self, account: str) -> AccountState:
        return self.store.get(account)

    def put(self, account: str, state: AccountState) -> None:
        self.store.put(account, state)

    def accounts(self) -> Iterator[tuple[str, AccountState]]:
        return self.store.accounts()

    def tier(self, state: AccountState) -> str:
        """The state's tier now: its own ``tier()`` where it has one, else suspected or ""."""
        now = self.clock()
        if hasattr(state, "tier"):
            return state.tier(now, self.settings)
        return "suspected" if state.is_suspected(now, self.settings) else ""

    def record(
        self,
        account: str,
        hashes: list[str],
        update: Update,
        sketches: np.ndarray | None = None,
        keep_sketches: int = 0,
    ) -> AccountState:
        seen: list[AccountState] = []

        def watched(state: AccountState, is_new, past) -> AccountState:
            seen.append(state)
            return update(state, is_new, past)

        state = self.store.record(account, hashes, watched, sketches, keep_sketches)
        # After the transaction: a retried one calls ``watched`` again; the last call counts.
        before = seen[-1]
        if self._has_expired(before):
            key = (account, float(getattr(before, "suspected_since", 0.0)))
            if key not in self._logged:
                self._logged.add(key)
                self.audit.event("expired", account, before)
        was, now = self.tier(before), self.tier(state)
        if was and now and was != now:
            self.audit.event("escalated", account, state, tier=now, previous_tier=was)
        return state

    def _has_expired(self, state: AccountState) -> bool:
        fired = getattr(state, "suspected_at_query", 0) > 0
        return fired and not state.is_suspected(self.clock(), self.settings)


def key_changes(before: dict[str, dict], after: dict[str, dict]) -> list[tuple[str, str]]:
    """``(event, account)`` for what changed between two readings of the key file."""
    changes = []
    for name, entry in after.items():
        old = before.get(name)
        if entry.get("revoked"):
            if old is not None and not old.get("revoked"):
                changes.append(("key_revoked", name))
        elif old is None or old.get("revoked") or old.get("sha256") != entry.get("sha256"):
            changes.append(("key_added", name))
    changes += [("key_revoked", name) for name in before if name not in after]
    return changes


def parse_since(text: str, now: float | None = None) -> float:
    """A start time: an ISO 8601 date/time (UTC if no zone), epoch seconds, or an age such
    as ``30m``, ``2h`` or ``7d`` (that long before now)."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give an ISO time (2026-12-01T09:00), epoch seconds or an age "
            "such as 30m, 2h, 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(seconds=1)


def read_file_events(path: Path, since: float = 0.0) -> Iterator[dict]:
    """Events from the file and its rotated backups (``path.N`` .. ``path.1``, oldest first)."""
    path = Path(path)
    backups = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    for file in [*backups, path]:
        if not file.exists():
            continue
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                yield from _parsed(line, since)


def read_stream_events(redis_url: str, since: float = 0.0, count: int = 10_000) -> Iterator[dict]:
    """Events from the shared Redis stream, from ``since`` on (stream ids are milliseconds)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, decode_responses=True)
    start = f"{int(since * 1000)}-0" if since else "-"
    while True:
        batch = client.xrange(AUDIT_STREAM, min=start, max="+", count=count)
        for _, fields in batch:
            yield from _parsed(fields.get("event", ""), since)
        if len(batch) < count:
            return
        last = batch[-1][0]
        start = "(" + last  # exclusive: continue after the last id read


def _parsed(line: str, since: float) -> Iterator[dict]:
    try:
        record = json.loads(line)
    except ValueError:
        return  # a line cut by a crash mid-write: skip it
    if isinstance(record, dict) and float(record.get("ts", 0.0)) >= since:
        yield record
