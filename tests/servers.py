"""Helpers that start real servers for tests: a bare embedded Triton, and the protected
deployment (Triton on loopback behind the gateway) on free ports. Fixtures stay in
``conftest.py``; test modules import these helpers from here."""

from __future__ import annotations

from pathlib import Path

from same_defense.gateway.options import AccountOptions
from same_defense.serving.deployment import ProtectedService
from same_defense.serving.embedded import EmbeddedTriton

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKDIR = PROJECT_ROOT / ".triton"  # backends prepared once, shared by every test server


def start_server(repository: Path, log_file: Path) -> EmbeddedTriton:
    """Triton alone on free ports (gRPC, HTTP, metrics), ready for requests."""
    return EmbeddedTriton.on_free_ports(repository, log_file, workdir=WORKDIR).start(timeout=120)


def protected_service(
    repository: Path, log_file: Path, accounts: AccountOptions, **options: object
) -> ProtectedService:
    """The default deployment on free ports, not started (``with`` it or call ``start``)."""
    return ProtectedService.on_free_ports(
        repository, log_file, accounts, workdir=WORKDIR, **options
    )
