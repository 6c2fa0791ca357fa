"""The protected deployment: Triton on loopback behind the gateway, the default for users.

The gateway is the only public door, on two ports: gRPC (``public_port``, 8001) and KServe v2
HTTP/REST (``http_port``, 8000), Triton's own defaults. It forwards only ``same``.

Triton's gRPC port listens on 127.0.0.1 only and, as a second lock, demands a random per-start
key header on every call but health/metadata (``--grpc-restricted-protocol``); only the
gateway knows the key. Triton's own HTTP port is closed (``--allow-http=false``): nothing in
the deployment needs it. An operator who wants it (``triton_http_port``) gets it on loopback,
locked with the same key (``--http-restricted-api``). Metrics stay on loopback.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.manifest import read_manifest
from ..gateway.options import AccountOptions
from ..gateway.proxy import GatewayServer
from ..gateway.rules import GatewayPolicy
from ..ports import free_port
from .embedded import EmbeddedTriton

KEY_HEADER = "same-gateway-key"


@dataclass
class ProtectedService:
    repository: Path
    public_host: str = "127.0.0.1"
    public_port: int = 8001  # the gateway's gRPC
    http_port: int | None = 8000  # the gateway's KServe v2 HTTP (None: gRPC only)
    metrics_port: int = 8002
    log_file: Path = Path("logs/tritonserver.log")
    workdir: Path = Path(".triton")
    accounts: AccountOptions = field(default_factory=AccountOptions)
    gateway_metrics_port: int | None = None
    triton_http_port: int | None = None  # Triton's own HTTP on loopback, keyed (None: closed)
    triton: EmbeddedTriton | None = field(default=None, init=False)
    gateway: GatewayServer | None = field(default=None, init=False)

    @classmethod
    def on_free_ports(
        cls, repository: Path, log_file: Path, accounts: AccountOptions, **options: Any
    ) -> ProtectedService:
        """The deployment on loopback ports nothing uses now (gateway gRPC and HTTP, Triton's
        metrics), not started: for the demo, the harness and the tests."""
        ports = {"public_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
        return cls(repository, log_file=log_file, accounts=accounts, **ports, **options)

    @property
    def public_url(self) -> str:
        return f"{self.public_host}:{self.gateway.port if self.gateway else self.public_port}"

    @property
    def http_url(self) -> str | None:
        """The gateway's public HTTP host:port (None when HTTP is off)."""
        port = self.gateway.http_port if self.gateway else self.http_port
        return None if port is None else f"{self.public_host}:{port}"

    @property
    def metrics_url(self) -> str:
        assert self.triton is not None
        return self.triton.metrics_url

    def upstream(self, key: tuple[str, str]) -> EmbeddedTriton:
        """The Triton this deployment runs, locked with ``key`` (not started)."""
        return EmbeddedTriton(
            self.repository,
            grpc_port=free_port(),
            metrics_port=self.metrics_port,
            http_port=self.triton_http_port or 0,
            allow_http=self.triton_http_port is not None,
            log_file=self.log_file,
            workdir=self.workdir,
            restricted_key=key,
        )

    def start(self, timeout: float = 180.0) -> ProtectedService:
        self.triton = self.upstream((KEY_HEADER, secrets.token_hex(16))).start(timeout)
        try:
            (header,) = self.triton.grpc_headers.items()
            policy = GatewayPolicy(upstream_header=header)
            listen = f"{self.public_host}:{self.public_port}"
            http = None if self.http_port is None else f"{self.public_host}:{self.http_port}"
            manifest = read_manifest(self.repository)
            self.gateway = GatewayServer(
                listen,
                self.triton.grpc_url,
                policy,
                metrics_port=self.gateway_metrics_port,
                http_listen=http,
                **self.accounts.gateway_parts(manifest),
            ).start()
        except BaseException:
            self.triton.stop()
            raise
        return self

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.triton is not None:
            self.triton.stop()
            self.triton = None

    def __enter__(self) -> ProtectedService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
