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
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._server = None

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
