"""The protected deployment: Triton on loopback behind the gateway, the default for users.

Triton's own gRPC port listens on 127.0.0.1 only and, as a second lock, demands a random
per-start key header on every call but health/metadata (``--grpc-restricted-protocol``).
Only the gateway knows the key, and the gateway forwards only ``same``. HTTP and metrics stay
on loopback for operators.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..core.manifest import MANIFEST_NAME
from ..serving.embedded import EmbeddedTriton, free_port
from .options import AccountOptions, read_manifest_file
from .proxy import GatewayPolicy, GatewayServer

KEY_HEADER = "same-gateway-key"


@dataclass
class ProtectedService:
    repository: Path
    public_host: str = "127.0.0.1"
    public_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_file: Path = Path("logs/tritonserver.log")
    workdir: Path = Path(".triton")
    accounts: AccountOptions = field(default_factory=AccountOptions)
    gateway_metrics_port: int | None = None
    triton: EmbeddedTriton | None = field(default=None, init=False)
    gateway: GatewayServer | None = field(default=None, init=False)

    @property
    def public_url(self) -> str:
        return f"{self.public_host}:{self.gateway.port if self.gateway else self.public_port}"

    @property
    def metrics_url(self) -> str:
        assert self.triton is not None
        return self.triton.metrics_url

    def start(self, timeout: float = 180.0) -> ProtectedService:
        key = (KEY_HEADER, secrets.token_hex(16))
        self.triton = EmbeddedTriton(
            self.repository, grpc_port=free_port(), http_port=self.http_port,
            metrics_port=self.metrics_port, log_file=self.log_file, workdir=self.workdir,
            restricted_key=key,
        ).start(timeout)  # fmt: skip
        try:
            (header,) = self.triton.grpc_headers.items()
            policy = GatewayPolicy(upstream_header=header)
            listen = f"{self.public_host}:{self.public_port}"
            manifest = read_manifest_file(self.repository / "defense" / "1" / MANIFEST_NAME)
            self.gateway = GatewayServer(
                listen,
                self.triton.grpc_url,
                policy,
                auth=self.accounts.authenticator(),
                accounts=self.accounts.service(manifest),
                metrics_port=self.gateway_metrics_port,
                throttle=self.accounts.throttle(),
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
