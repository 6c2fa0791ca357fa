"""The gateway's Prometheus metrics (its own registry, so two gateways fit in one process)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "same_gateway_requests",
            "Inference requests answered, by account state",
            ["account_state"],
            registry=r,
        )
        self.queries = Counter(
            "same_gateway_queries",
            "Samples answered, by account state (suspected: all with the response policy)",
            ["account_state"],
            registry=r,
        )
        self.accounts_seen = Gauge(
            "same_gateway_accounts_seen", "Distinct accounts this gateway has served", registry=r
        )
        self.suspicions = Counter(
            "same_gateway_suspicions", "Accounts this gateway saw become suspected", registry=r
        )
        self.auth_failures = Counter(
            "same_gateway_auth_failures", "Calls refused for a missing or unknown key", registry=r
        )
        self.state_errors = Counter(
            "same_gateway_state_errors", "Account-state store failures", registry=r
        )
        self.drift_alerts = Counter(
            "same_gateway_drift_alerts",
            "Times the population monitor saw many unrelated established accounts alarm "
            "together (the traffic drifted from the calibration data)",
            registry=r,
        )
        self.drift_active = Gauge(
            "same_gateway_drift_active",
            "1 while a population drift is in force (new alarms are held for the operator)",
            registry=r,
        )
        self.held_accounts = Gauge(
            "same_gateway_held_accounts",
            "Accounts whose alarm the last drift alert held (answered normally, listed)",
            registry=r,
        )
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._server = None

    def watch_population(self, accounts) -> None:
        """Drift metrics from an :class:`~same_defense.accounts.AccountService`'s monitor."""
        population = accounts.population
        if population is None:
            return
        self.drift_active.set_function(lambda: 0.0 if population.drift_since is None else 1.0)

        def drifted(held: list[str], now: float) -> None:
            self.drift_alerts.inc()
            self.held_accounts.set(len(held))

        accounts.on_drift.append(drifted)

    def observe(self, account: str, samples: int, tier: bool | str) -> None:
        """Count one answered request by its account tier ("normal", "review", "suspected")."""
        state = "suspected" if tier is True else (tier or "normal")
        self.requests.labels(state).inc()
        self.queries.labels(state).inc(samples)
        with self._lock:
            if account not in self._seen:
                self._seen.add(account)
                self.accounts_seen.set(len(self._seen))

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
