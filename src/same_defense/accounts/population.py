"""Drift is not theft: the population monitor that tells the two apart.

SAME's score measures how unlike the training data a query is. When a customer segment gets a
new camera or pen, many accounts' statistics rise together: that is the data changing, and
suspecting each of them would serve a whole segment worse answers for nothing. A thief's
accounts rise too, but they are few and linked (one network, one key group), or each one is
so foreign that its own evidence is strong.

The monitor keeps the recent alarms of *established* accounts (more than ``young_queries``
distinct queries when their own test fired: customers who were there before the data changed)
with their links. A swarm of new keys never counts: that is what a thief buys. When at
least ``drift_accounts`` of them within ``window_s`` are *unrelated* (no shared network and no
shared group), the traffic has drifted: the monitor raises the drift alert (a gauge, a log
line, an audit event) and the service *holds* those alarms and every new one the operator has
not confirmed, strong evidence included: the account is listed for the operator as held, and
answered normally. The
operator then looks, and either recalibrates with data from the new source
(``same-build --recalibrate --calibration-extra DIR``) or confirms the accounts that are
thieves. What this costs: a thief patient enough to give each of many unrelated keys a history of
in-distribution queries first, and then to turn them all at once, looks like a drift and is
held until the operator looks (docs/serving.md, threat model). Customers who arrive with
shifted data are new accounts: they are reviewed (top-1 labels, no loss of accuracy), not held.

Several gateways share one population: with ``--redis`` the alarms go to a Redis sorted set
(:class:`RedisAlarmLog`) that every gateway reads, so a drift whose accounts happen to be
spread over the replicas (fewer than ``drift_accounts`` behind each) is still seen as one.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .store import RedisBacked


@dataclass(frozen=True)
class Alarm:
    account: str
    links: tuple[str, ...]
    at: float


class AlarmLog(Protocol):
    """Where the population's alarms are kept: one gateway's memory, or shared in Redis."""

    def add(self, alarm: Alarm) -> None: ...

    def since(self, start: float) -> list[Alarm]:
        """The alarms at or after ``start``, oldest first (older ones may be dropped)."""
        ...


class MemoryAlarmLog:
    """One gateway's alarms (a single gateway, the tests and the offline evaluation)."""

    def __init__(self) -> None:
        self._alarms: deque[Alarm] = deque()
        self._lock = threading.Lock()

    def add(self, alarm: Alarm) -> None:
        with self._lock:
            self._alarms.append(alarm)

    def since(self, start: float) -> list[Alarm]:
        with self._lock:
            while self._alarms and self._alarms[0].at < start:
                self._alarms.popleft()
            return list(self._alarms)


class RedisAlarmLog(RedisBacked):
    """The alarms of every gateway on one Redis, in the sorted set ``key`` (score: time)."""

    def __init__(self, url: str, key: str = "same:population:alarms", timeout_s: float = 1.0):
        super().__init__(url, "population alarms", timeout_s)
        self.key = key

    def add(self, alarm: Alarm) -> None:
        member = json.dumps([alarm.account, list(alarm.links), alarm.at])
        self._call(lambda: self.client.zadd(self.key, {member: alarm.at}))

    def since(self, start: float) -> list[Alarm]:
        def read() -> list[str]:
            with self.client.pipeline() as pipe:
                pipe.zremrangebyscore(self.key, "-inf", f"({start}")
                pipe.zrangebyscore(self.key, start, "+inf")
                return pipe.execute()[1]

        rows = [json.loads(member) for member in self._call(read)]
        return [Alarm(account, tuple(links), float(at)) for account, links, at in rows]


class PopulationMonitor:
    """Recent alarms, and whether enough unrelated accounts share them to call it drift."""

    def __init__(
        self,
        drift_accounts: int = 5,
        window_s: float = 24 * 3600.0,
        log: AlarmLog | None = None,
    ) -> None:
        if drift_accounts < 2 or window_s <= 0:
            raise ValueError("need drift_accounts >= 2 and window_s > 0")
        self.drift_accounts = drift_accounts
        self.window_s = window_s
        self.log: AlarmLog = log if log is not None else MemoryAlarmLog()
        self._lock = threading.Lock()
        self.drift_since: float | None = None
        self.drifts = 0  # times this gateway raised the alert

    def unrelated(self, now: float) -> list[Alarm]:
        """A greedy set of recent alarms that share no link with each other."""
        alarms = self.log.since(now - self.window_s)
        chosen: list[Alarm] = []
        seen_accounts: set[str] = set()
        seen_links: set[str] = set()
        for alarm in alarms:
            if alarm.account in seen_accounts or seen_links.intersection(alarm.links):
                continue
            chosen.append(alarm)
            seen_accounts.add(alarm.account)
            seen_links.update(alarm.links)
        return chosen

    def alarm(self, account: str, links: tuple[str, ...], now: float) -> bool:
        """Record an account's alarm; True when the population is (now) drifting."""
        self.log.add(Alarm(account, tuple(links), now))
        return self.drifting(now)

    def drifting(self, now: float) -> bool:
        """Whether at least ``drift_accounts`` unrelated accounts alarmed within the window."""
        active = len(self.unrelated(now)) >= self.drift_accounts
        with self._lock:
            if active and self.drift_since is None:
                self.drift_since = now
                self.drifts += 1
            elif not active:
                self.drift_since = None
        return active

    def recent_accounts(self, now: float) -> list[str]:
        """Every account with an alarm inside the window (the ones a drift holds)."""
        return list(dict.fromkeys(a.account for a in self.log.since(now - self.window_s)))
