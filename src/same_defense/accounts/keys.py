"""Operator-provisioned API keys, stored as SHA-256 digests in a JSON file.

A key is ``same_<account>_<32 random hex>``: 128 bits of randomness, so a plain SHA-256 is
enough to keep the file useless to a reader (no password stretching is needed for random
keys). The gateway re-reads the file when it changes, so a revocation takes effect at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

# Where the operator's keys live by default (relative to the working directory, like
# model_repository/): same-accounts writes it, same-serve and same-gateway read it.
DEFAULT_KEY_FILE = Path("accounts/keys.json")
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyStoreError(RuntimeError):
    """The key file is broken, or an account name is invalid or unknown."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The key file: ``{"accounts": {name: {"sha256", "created", "revoked"}}}``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._by_digest: dict[str, str] = {}
        self._entries: dict[str, dict] | None = None  # the accounts at the last reload
        # Called with (accounts before, accounts after) when a reload finds the file changed,
        # whoever edited it (same-accounts, a Secret update): the gateway's audit trail.
        self.on_change: list[Callable[[dict[str, dict], dict[str, dict]], None]] = []

    def _read(self) -> dict:
        if not self.path.exists():
            return {"accounts": {}}
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data.get("accounts"), dict):
                raise ValueError("no 'accounts' object")
            return data
        except (ValueError, OSError) as exc:
            raise KeyStoreError(f"key file {self.path} is unreadable: {exc}") from None

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)  # atomic: a gateway never reads half a file

    def add(self, account: str, group: str | None = None) -> str:
        """Create ``account`` (or give it a new key) and return the key; shown once only.

        ``group`` (a customer record, a reseller) links the account to the others of its
        group: the account test pools their evidence (``accounts/links.py``).
        """
        if not ACCOUNT_NAME.match(account):
            raise KeyStoreError(
                f"account name {account!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )
        key = f"same_{account}_{secrets.token_hex(16)}"
        data = self._read()
        if group is not None and not ACCOUNT_NAME.match(group):
            raise KeyStoreError(f"group name {group!r}: use 1-64 letters, digits, '.', '_' or '-'")
        data["accounts"][account] = {
            "sha256": digest(key),
            "created": time.time(),
            "revoked": False,
            **({"group": group} if group else {}),
        }
        self._write(data)
        return key

    def revoke(self, account: str) -> None:
        data = self._read()
        if account not in data["accounts"]:
            raise KeyStoreError(f"no account {account!r} in {self.path}")
        data["accounts"][account]["revoked"] = True
        self._write(data)

    def list(self) -> dict[str, dict]:
        return {
            name: {
                "created": entry.get("created"),
                "revoked": bool(entry.get("revoked")),
                "group": entry.get("group"),
            }
            for name, entry in sorted(self._read()["accounts"].items())
        }

    def authenticate(self, key: str) -> str | None:
        """The account a key belongs to, or None (unknown or revoked)."""
        # A dict lookup on the digest: timing reveals nothing about a random key's digest.
        self._refresh()
        return self._by_digest.get(digest(key))

    def group_of(self, account: str) -> str | None:
        """The group ``account`` was created in (None: none)."""
        self._refresh()
        return (self._entries or {}).get(account, {}).get("group")

    def refresh(self) -> None:
        """Reload the file if it changed since the last reading (done before every check)."""
        self._refresh()

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = -1.0
        with self._lock:
            if mtime == self._mtime:
                return
            accounts = self._read()["accounts"]
            self._by_digest = {
                e["sha256"]: name for name, e in accounts.items() if not e.get("revoked")
            }
            self._mtime = mtime
            before, self._entries = self._entries, accounts
        if before is not None:  # the first reading is the baseline, not a change
            for listener in self.on_change:
                listener(before, accounts)
