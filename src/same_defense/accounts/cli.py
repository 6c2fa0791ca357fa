"""``same-accounts``: the operator's command line for keys and account state.

    same-accounts add alice               # prints alice's new key (shown once)
    same-accounts add bot-7 --group acme  # a key in a group: the account test pools its evidence
    same-accounts list                    # accounts in the key file
    same-accounts revoke alice            # the key stops working at once
    same-accounts suspected               # accounts under suspicion, with their statistics
    same-accounts show alice              # one account's state
    same-accounts clear alice             # lift a suspicion (the test starts again)
    same-accounts confirm alice           # confirm one (graded response: the policy applies)
    same-accounts events --since 1h       # the audit trail (JSON lines)
    same-accounts suspected --redis URL   # the same, read from the shared Redis store
    same-accounts migrate-keys --redis URL  # once, after upgrading: keys with hash tags

Key commands edit the key file the gateway reads (``--keys``). State commands ask the
gateway's admin API (``--admin``, loopback, token in ``--admin-token-file``): that works with
the in-memory default, where state lives inside the gateway process, and with Redis alike.
With ``--redis URL`` they read and write the shared store directly (no gateway needed).
``events`` reads the gateway's audit log (``--audit-log``), or the shared stream with
``--redis``. Operations guide: docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_errors import add_debug_argument, run_command, wants_debug
from ..core.accounts import AccountSettings, account_settings_from_manifest
from ..core.layout import MANIFEST_FILE
from ..core.manifest import read_manifest_file

# The gateway's side (admin API, audit trail); imported here, not at the package's top, so
# that the gateway's own imports of ``same_defense.accounts`` stay free of cycles.
from .admin import DEFAULT_ADMIN_LISTEN, DEFAULT_TOKEN_FILE, AdminClient, AdminUnavailable
from .audit import (
    DEFAULT_AUDIT_LOG,
    AuditLog,
    parse_since,
    read_file_events,
    read_stream_events,
)
from .keys import DEFAULT_KEY_FILE, KeyStore, KeyStoreError
from .service import AccountService
from .store import RedisStore, StoreUnavailable

DEFAULT_MANIFEST = Path("model_repository") / MANIFEST_FILE


def _service(args: argparse.Namespace) -> AccountService:
    # Without a built repository the service still lists and clears accounts (defaults).
    manifest = read_manifest_file(args.manifest) if args.manifest.exists() else None
    settings = account_settings_from_manifest(manifest) or AccountSettings()
    return AccountService(settings, RedisStore(args.redis))


def _admin(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.admin, args.admin_token_file)


def _statistic(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _row(name: str, state: dict, tier: str = "") -> str:
    """One account on one line: the counts first, then every other scalar of its state
    (whatever fields the account test keeps)."""
    first = ("queries", "distinct", "suspected_at_query")
    rest = [
        f"{k} {_statistic(v)}"
        for k, v in state.items()
        if k not in first and isinstance(v, int | float | str) and not isinstance(v, bool)
    ]
    head = (
        f"{name:24s} queries {state.get('queries', 0):7d}  distinct {state.get('distinct', 0):7d}"
        f"  suspected at {state.get('suspected_at_query', 0)}"
    )
    return "  ".join([head, *([f"tier {tier}"] if tier else []), *rest])


def _add(args: argparse.Namespace, keys: KeyStore) -> None:
    print(keys.add(args.account, group=args.group))
    print(f"key for {args.account!r} written (hashed) to {args.keys}", file=sys.stderr)
    _tell_gateway(args)


def _revoke(args: argparse.Namespace, keys: KeyStore) -> None:
    keys.revoke(args.account)
    print(f"revoked {args.account!r}")
    _tell_gateway(args)


def _list(args: argparse.Namespace, keys: KeyStore) -> None:
    for name, entry in keys.list().items():
        print(f"{name:24s} {'revoked' if entry['revoked'] else 'active'}")


def _suspected(args: argparse.Namespace, keys: KeyStore) -> None:
    if args.redis:
        service = _service(args)
        now = service.clock()
        rows = [
            (name, state.to_dict(), _tier(state, now, service.settings))
            for name, state in service.suspected()
        ]
    else:
        answer = _admin(args).call("GET", "/v1/suspected")["accounts"]
        rows = [(e["account"], e["state"], e.get("tier", "")) for e in answer]
    for name, state, tier in rows:
        print(_row(name, state, tier))


def _tier(state, now: float, settings: AccountSettings) -> str:
    """The account's tier where the test grades its answer, else "suspected" or ""."""
    if hasattr(state, "tier"):
        return state.tier(now, settings)
    return "suspected" if state.is_suspected(now, settings) else ""


def _show(args: argparse.Namespace, keys: KeyStore) -> None:
    if args.redis:
        service = _service(args)
        state = service.store.get(args.account)
        shown = {
            "account": args.account,
            "suspected": state.is_suspected(service.clock(), service.settings),
            "tier": _tier(state, service.clock(), service.settings),
            "state": state.to_dict(),
            "key": keys.list().get(args.account),
        }
    else:
        shown = _admin(args).call("GET", f"/v1/accounts/{args.account}")
    print(json.dumps(shown, indent=2))


def _clear(args: argparse.Namespace, keys: KeyStore) -> None:
    if args.redis:
        service = _service(args)
        before = service.store.get(args.account)
        state = service.clear(args.account).to_dict()
        # Straight to the shared trail: no gateway saw this clear.
        AuditLog(None, gateway="same-accounts", redis_url=args.redis).event(
            "cleared", args.account, before, by="same-accounts --redis"
        )
    else:
        state = _admin(args).call("POST", f"/v1/accounts/{args.account}/clear")["state"]
    print(f"cleared {args.account!r} (cleared {state.get('cleared', '?')} time(s) so far)")


def _confirm(args: argparse.Namespace, keys: KeyStore) -> None:
    """Confirm a suspicion where the account test grades its answer (the policy applies)."""
    if args.redis:
        service = _service(args)
        if not hasattr(service, "confirm"):
            raise ValueError("this account test has nothing to confirm")
        state = service.confirm(args.account)
        AuditLog(None, gateway="same-accounts", redis_url=args.redis).event(
            "confirmed", args.account, state, by="same-accounts --redis"
        )
    else:
        _admin(args).call("POST", f"/v1/accounts/{args.account}/confirm")
    print(f"confirmed {args.account!r}")


def _events(args: argparse.Namespace, keys: KeyStore) -> None:
    since = parse_since(args.since) if args.since else 0.0
    if args.redis:
        events = read_stream_events(args.redis, since)
    else:
        events = read_file_events(args.audit_log, since)
    for event in events:
        if args.account is None or event.get("account") == args.account:
            print(json.dumps(event))


def _migrate_keys(args: argparse.Namespace, keys: KeyStore) -> None:
    if not args.redis:
        raise ValueError("migrate-keys renames keys in Redis: give --redis URL")
    moved = RedisStore(args.redis).migrate_legacy_keys()
    print(f"moved {moved} account(s) to hash-tagged keys (same:acct:{{NAME}}:state)")


def _tell_gateway(args: argparse.Namespace) -> None:
    """Ask a running gateway to re-read the key file now, so that the audit trail records the
    change at once (it would otherwise at the next call); silent when none runs."""
    try:
        _admin(args).call("POST", "/v1/keys/reload")
    except AdminUnavailable:
        pass


# Subcommand -> handler; every handler gets the parsed arguments and the key file (the state
# commands ignore the latter). Insertion order is the order of the subcommands in --help.
COMMANDS = {
    "add": _add,
    "revoke": _revoke,
    "show": _show,
    "clear": _clear,
    "confirm": _confirm,
    "list": _list,
    "suspected": _suspected,
    "events": _events,
    "migrate-keys": _migrate_keys,
}
# The subcommands that name one account.
ACCOUNT_COMMANDS = ("add", "revoke", "show", "clear", "confirm")


def _common_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every subcommand takes, before or after its name (``same-accounts
    suspected --redis URL`` and ``same-accounts --redis URL suspected`` alike); after the name
    they override, so there they have no defaults of their own."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--keys", type=Path, default=default(DEFAULT_KEY_FILE), help="the gateway's key file"
    )
    p.add_argument(
        "--redis",
        default=default(None),
        help="read and write the shared Redis store directly (else: the admin API)",
    )
    p.add_argument(
        "--admin", default=default(f"http://{DEFAULT_ADMIN_LISTEN}"), help="gateway's admin API"
    )
    p.add_argument(
        "--admin-token-file", type=Path, default=default(DEFAULT_TOKEN_FILE), help="its token"
    )
    p.add_argument(
        "--audit-log", type=Path, default=default(DEFAULT_AUDIT_LOG), help="gateway's audit log"
    )
    p.add_argument(
        "--manifest", type=Path, default=default(DEFAULT_MANIFEST), help="account settings"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="same-accounts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command = sub.add_parser(name)
        _common_options(command, defaults=False)
        if name in ACCOUNT_COMMANDS:
            command.add_argument("account")
    sub.choices["add"].add_argument(
        "--group",
        help="the customer record this key belongs to: the account test pools the evidence "
        "of a group's accounts, so keys bought under one name add up",
    )
    events = sub.choices["events"]
    events.add_argument("--since", help="ISO time, epoch seconds or an age (30m, 2h, 7d)")
    events.add_argument("--account", help="only this account's events")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``same-accounts``; an error is one line on stderr (the traceback with --debug)."""
    return run_command("same-accounts", lambda: _main(argv), wants_debug(argv))


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    keys = KeyStore(args.keys)
    try:
        COMMANDS[args.command](args, keys)
    except (KeyStoreError, StoreUnavailable, AdminUnavailable, ValueError, OSError) as exc:
        print(f"same-accounts: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
