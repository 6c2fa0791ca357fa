"""Command-line options of the account layer, shared by ``same-serve`` and ``same-gateway``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..accounts import AccountService, KeyStore, MemoryStore, RedisStore
from ..accounts.admin import DEFAULT_ADMIN_LISTEN, DEFAULT_TOKEN_FILE
from ..accounts.audit import DEFAULT_AUDIT_LOG, AuditLog
from ..accounts.keys import DEFAULT_KEY_FILE
from ..accounts.lineage_pool import RedisLineagePool
from ..accounts.population import PopulationMonitor, RedisAlarmLog
from ..accounts.service import FAIL_MODES
from ..core.accounts import account_settings_from_manifest
from .accounting import Authenticator, SuspectLane, Throttle
from .proxy import AdminOptions
from .rules import AccountRules

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
    # Requests of accounts under suspicion at Triton at once, per gateway (0: no bound); by
    # default one, so that a thief's load does not make honest users wait (issue 20).
    suspected_in_flight: int = 1
    audit_log: Path | None = None  # the audit trail's file (None: no audit trail)
    admin_listen: str | None = None  # the admin API's host:port (None: no admin API)
    admin_token_file: Path = field(default_factory=lambda: DEFAULT_TOKEN_FILE)
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For is believed
    tell_review: bool = False  # tell a reviewed client in a response parameter
    link_accounts: bool = True  # pool evidence per network and key group
    drift_monitor: bool = True  # hold the alarms of a drift of many established accounts

    def rules(self) -> AccountRules:
        return AccountRules(tuple(self.trusted_proxies), self.tell_review, self.link_accounts)

    def admin(self) -> AdminOptions | None:
        if self.admin_listen is None:
            return None
        return AdminOptions(self.admin_listen, self.admin_token_file)

    def audit(self, manifest: dict | None) -> AuditLog | None:
        """The audit trail: the file, and the shared stream when state is in Redis."""
        if self.audit_log is None:
            return None
        settings = account_settings_from_manifest(manifest)
        return AuditLog(
            self.audit_log,
            settings=settings.to_dict() if settings is not None else None,
            redis_url=self.redis_url,
        )

    def throttle(self) -> Throttle | None:
        return Throttle(self.suspected_rate) if self.suspected_rate else None

    def lane(self) -> SuspectLane | None:
        return SuspectLane(self.suspected_in_flight) if self.suspected_in_flight > 0 else None

    def gateway_parts(self, manifest: dict | None) -> dict[str, Any]:
        """What a :class:`~.proxy.GatewayServer` takes from these options, as its keyword
        arguments: one place for every deployment (``same-gateway``, ``same-serve``)."""
        return {
            "auth": self.authenticator(),
            "accounts": self.service(manifest),
            "throttle": self.throttle(),
            "lane": self.lane(),
            "rules": self.rules(),
            "admin": self.admin(),
            "audit": self.audit(manifest),
        }

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
        # With Redis every gateway sees every gateway's alarms: one population, not one each.
        alarms = RedisAlarmLog(self.redis_url) if self.redis_url else None
        population = PopulationMonitor(log=alarms) if self.drift_monitor else None
        # ...and every gateway's accounts under review add to one lineage pool.
        pool = (
            RedisLineagePool(self.redis_url, size=settings.lineage_pool)
            if self.redis_url and settings.strong_patterns and settings.lineage_pool > 0
            else None
        )
        return AccountService(
            settings,
            store,
            on_store_error=self.on_store_error,
            population=population,
            lineage_pool=pool,
        )


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
        "--suspected-in-flight",
        type=int,
        default=AccountOptions.suspected_in_flight,
        help="requests of accounts under suspicion at Triton at once, per gateway; the rest "
        "wait their turn (default %(default)s; 0: no bound, they compete with honest users)",
    )
    g.add_argument(
        "--no-account-defense", action="store_true", help="per-query SAME only (no account test)"
    )
    g.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a load balancer whose X-Forwarded-For names the client (repeatable); from "
        "any other peer the header is ignored",
    )
    g.add_argument(
        "--tell-review",
        action="store_true",
        help="tell a client whose account is under review (response parameter "
        "same_account_review); off by default: it also tells a thief when to switch keys",
    )
    g.add_argument(
        "--no-link-accounts",
        action="store_true",
        help="do not pool evidence per network and key group",
    )
    g.add_argument(
        "--no-drift-monitor",
        action="store_true",
        help="act on every alarm, even when many unrelated established accounts alarm together",
    )
    add_operator_arguments(p)


def add_operator_arguments(p: argparse.ArgumentParser) -> None:
    """The audit trail and the admin API (docs/operations.md)."""
    g = p.add_argument_group("operator")
    audit = g.add_mutually_exclusive_group()
    audit.add_argument(
        "--audit-log",
        type=Path,
        default=DEFAULT_AUDIT_LOG,
        help="JSON lines, one per change of an account's standing (rotated; also a Redis "
        "stream with --redis)",
    )
    audit.add_argument("--no-audit-log", action="store_true", help="no audit trail")
    admin = g.add_mutually_exclusive_group()
    admin.add_argument(
        "--admin-listen",
        default=DEFAULT_ADMIN_LISTEN,
        help="host:port of the admin API (same-accounts talks to it; keep it on loopback)",
    )
    admin.add_argument("--no-admin", action="store_true", help="no admin API")
    g.add_argument(
        "--admin-token-file",
        type=Path,
        default=DEFAULT_TOKEN_FILE,
        help="the admin API's token (written with a new random token when missing)",
    )


def options_from_args(args: argparse.Namespace) -> AccountOptions:
    return AccountOptions(
        keys_file=None if args.anonymous else args.keys,
        anonymous=args.anonymous,
        redis_url=args.redis,
        on_store_error=args.on_store_error,
        account_defense=not args.no_account_defense,
        suspected_rate=args.suspected_rate,
        suspected_in_flight=args.suspected_in_flight,
        audit_log=None if args.no_audit_log else args.audit_log,
        admin_listen=None if args.no_admin else args.admin_listen,
        admin_token_file=args.admin_token_file,
        trusted_proxies=tuple(args.trusted_proxy),
        tell_review=args.tell_review,
        link_accounts=not args.no_link_accounts,
        drift_monitor=not args.no_drift_monitor,
    )
