"""``same-accounts``: the operator's command line for keys and account state.

    same-accounts add alice               # prints alice's new key (shown once)
    same-accounts list                    # accounts in the key file
    same-accounts revoke alice            # the key stops working at once
    same-accounts suspected --redis URL   # accounts under suspicion, with their statistics
    same-accounts show alice --redis URL  # one account's state
    same-accounts clear alice --redis URL # lift a suspicion (the test starts again)

Key commands edit the key file the gateway reads (``--keys``). State commands read the shared
Redis store; with the in-memory default, state lives inside the gateway process (suspicions are
logged there and counted in its metrics) and ends with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_errors import add_debug_argument, run_command, wants_debug
from ..core.accounts import AccountSettings, account_settings_from_manifest
from .keys import DEFAULT_KEY_FILE, KeyStore, KeyStoreError
from .service import AccountService
from .store import RedisStore, StoreUnavailable

DEFAULT_MANIFEST = Path("model_repository/defense/1/same_calibration.json")


def _service(args: argparse.Namespace) -> AccountService:
    manifest = json.loads(args.manifest.read_text()) if args.manifest.exists() else None
    settings = account_settings_from_manifest(manifest) or AccountSettings()
    return AccountService(settings, RedisStore(args.redis))


def _row(name: str, state) -> str:
    return (
        f"{name:24s} queries {state.queries:7d}  distinct {state.distinct:7d}  exceeded "
        f"{state.exceedances:7d}  cusum {state.cusum:6.1f}  suspected at {state.suspected_at_query}"
    )


def _add(args: argparse.Namespace, keys: KeyStore) -> None:
    print(keys.add(args.account))
    print(f"key for {args.account!r} written (hashed) to {args.keys}", file=sys.stderr)


def _revoke(args: argparse.Namespace, keys: KeyStore) -> None:
    keys.revoke(args.account)
    print(f"revoked {args.account!r}")


def _list(args: argparse.Namespace, keys: KeyStore) -> None:
    for name, entry in keys.list().items():
        print(f"{name:24s} {'revoked' if entry['revoked'] else 'active'}")


def _suspected(args: argparse.Namespace, keys: KeyStore) -> None:
    for name, state in _service(args).suspected():
        print(_row(name, state))


def _show(args: argparse.Namespace, keys: KeyStore) -> None:
    print(json.dumps(_service(args).store.get(args.account).to_dict(), indent=2))


def _clear(args: argparse.Namespace, keys: KeyStore) -> None:
    state = _service(args).clear(args.account)
    print(f"cleared {args.account!r} (cleared {state.cleared} time(s) so far)")


# Subcommand -> handler; every handler gets the parsed arguments and the key file (the state
# commands ignore the latter). Insertion order is the order of the subcommands in --help.
COMMANDS = {
    "add": _add,
    "revoke": _revoke,
    "show": _show,
    "clear": _clear,
    "list": _list,
    "suspected": _suspected,
}
# The subcommands that name one account.
ACCOUNT_COMMANDS = ("add", "revoke", "show", "clear")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="same-accounts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--keys", type=Path, default=DEFAULT_KEY_FILE, help="the gateway's key file")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="shared state store")
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="account settings")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command = sub.add_parser(name)
        if name in ACCOUNT_COMMANDS:
            command.add_argument("account")
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
    except (KeyStoreError, StoreUnavailable) as exc:
        print(f"same-accounts: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
