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
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Alarm:
    account: str
    links: tuple[str, ...]
    at: float


class PopulationMonitor:
    """Recent alarms, and whether enough unrelated accounts share them to call it drift."""

    def __init__(self, drift_accounts: int = 5, window_s: float = 24 * 3600.0) -> None:
        if drift_accounts < 2 or window_s <= 0:
            raise ValueError("need drift_accounts >= 2 and window_s > 0")
        self.drift_accounts = drift_accounts
        self.window_s = window_s
        self._alarms: deque[Alarm] = deque()
        self._lock = threading.Lock()
        self.drift_since: float | None = None
        self.drifts = 0  # times the alert was raised

    def _expire(self, now: float) -> None:
        while self._alarms and now - self._alarms[0].at > self.window_s:
            self._alarms.popleft()

    def unrelated(self, now: float) -> list[Alarm]:
        """A greedy set of recent alarms that share no link with each other."""
        with self._lock:
            self._expire(now)
            alarms = list(self._alarms)
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
        with self._lock:
            self._alarms.append(Alarm(account, tuple(links), now))
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
        with self._lock:
            self._expire(now)
            return list(dict.fromkeys(a.account for a in self._alarms))
