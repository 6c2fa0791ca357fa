"""Command-line options of the account layer, shared by ``same-serve`` and ``same-gateway``."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..accounts import AccountService, KeyStore, MemoryStore, RedisStore
from ..accounts.keys import DEFAULT_KEY_FILE
from ..accounts.service import FAIL_MODES
from ..core.accounts import account_settings_from_manifest
from .accounting import Authenticator, Throttle

log = logging.getLogger("same.gateway")


@dataclass
class AccountOptions:
    """How the gateway knows its callers and where it keeps their state."""

    keys_file: Path | None = DEFAULT_KEY_FILE  # None with anonymous=True
    anonymous: bool = False  # account = caller's address (no keys)
    redis_url: str | None = None  # None: state in the gateway's memory
    on_store_error: str = "closed"
    account_defense: bool = True  # False: per-query SAME only
    suspected_rate: float | None = None  # requests/s for a suspected account (None: no limit)

    def throttle(self) -> Throttle | None:
        return Throttle(self.suspected_rate) if self.suspected_rate else None

    def authenticator(self) -> Authenticator:
        if self.anonymous:
            return Authenticator(anonymous=True)
        if self.keys_file is None:
            raise ValueError("give a key file, or choose the anonymous mode")
        return Authenticator(keys=KeyStore(self.keys_file))

    def service(self, manifest: dict | None) -> AccountService | None:
        """The account defense for a repository's manifest (None if off or not calibrated)."""
        if not self.account_defense:
            return None
        settings = account_settings_from_manifest(manifest)
        if settings is None:
            log.warning("manifest has no account calibration: account-level defense off")
            return None
        store = (
            RedisStore(self.redis_url) if self.redis_url else MemoryStore(settings.dedupe_window)
        )
        return AccountService(settings, store, on_store_error=self.on_store_error)


def add_account_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accounts")
    g.add_argument(
        "--keys", type=Path, default=DEFAULT_KEY_FILE, help="API key file (same-accounts add NAME)"
    )
    g.add_argument(
        "--anonymous", action="store_true", help="no keys: each caller address is an account"
    )
    g.add_argument("--redis", help="redis://host:port/db for shared account state")
    g.add_argument(
        "--on-store-error",
        choices=FAIL_MODES,
        default="closed",
        help="when the state store is down: refuse service (closed) or serve (open)",
    )
    g.add_argument(
        "--suspected-rate",
        type=float,
        help="also throttle suspected accounts to this many requests/s (per gateway)",
    )
    g.add_argument(
        "--no-account-defense", action="store_true", help="per-query SAME only (no account test)"
    )


def options_from_args(args: argparse.Namespace) -> AccountOptions:
    return AccountOptions(
        keys_file=None if args.anonymous else args.keys,
        anonymous=args.anonymous,
        redis_url=args.redis,
        on_store_error=args.on_store_error,
        account_defense=not args.no_account_defense,
        suspected_rate=args.suspected_rate,
    )


def read_manifest_file(path: Path | None) -> dict | None:
    if path is None or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())
