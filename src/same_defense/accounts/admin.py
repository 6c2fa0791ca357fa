"""The gateway's admin API: the operator's view of account state, wherever that state lives.

With the in-memory default the account state exists only inside the gateway process, so the
operator's tools must ask the gateway. This is a small JSON-over-HTTP server on its own
address (loopback by default; in Kubernetes reached with ``kubectl port-forward``), never on
a public port, and every call needs the admin token (``Authorization: Bearer <token>``), a
secret of its own in a file: a client's API key opens nothing here.

    GET  /v1/suspected                  accounts under suspicion, with their statistics
    GET  /v1/accounts                   every account the store knows
    GET  /v1/accounts/NAME              one account: state, whether suspected, its key
    POST /v1/accounts/NAME/clear        lift a suspicion (the test starts again)
    POST /v1/accounts/NAME/confirm      confirm it (where the account test has a graded
                                        response: the policy applies from then on)
    POST /v1/accounts/NAME/revoke       revoke the account's key in the gateway's key file
    POST /v1/keys/reload                re-read the key file now (logs key changes)

Account state is rendered generically (``AccountState.to_dict()``), so new fields of the
account test show up without a change here.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .audit import AuditLog
from .keys import ACCOUNT_NAME, KeyStore, KeyStoreError
from .service import AccountService
from .store import StoreUnavailable

DEFAULT_ADMIN_LISTEN = "127.0.0.1:8004"
DEFAULT_TOKEN_FILE = Path("accounts/admin-token")
_ACCOUNT_PATH = re.compile(r"^/v1/accounts/([^/]+)(?:/(clear|confirm|revoke))?$")

log = logging.getLogger("same.accounts.admin")


class AdminError(Exception):
    """An admin call that cannot be answered; ``status`` is the HTTP status to send."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def ensure_token(path: Path) -> str:
    """The admin token in ``path``; a new random one (mode 0600) when the file is missing."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        log.info("admin token written to %s", path)
    return read_token(path)


def read_token(path: Path) -> str:
    token = Path(path).read_text().strip()
    if len(token) < 16:
        raise ValueError(f"admin token in {path} is too short (at least 16 characters)")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class AdminApi:
    """What the admin calls do, independent of HTTP (tests call it directly too)."""

    accounts: AccountService | None
    keys: KeyStore | None
    audit: AuditLog | None = None

    def _service(self) -> AccountService:
        if self.accounts is None:
            raise AdminError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "the account-level defense is off on this gateway (no account calibration)",
            )
        return self.accounts

    def _entry(self, account: str, state) -> dict:
        service = self._service()
        now = service.clock()
        entry = {"account": account, "suspected": state.is_suspected(now, service.settings)}
        if hasattr(state, "tier"):  # a graded response: how the account is answered now
            entry["tier"] = state.tier(now, service.settings)
        entry["state"] = state.to_dict()
        return entry

    def suspected(self) -> dict:
        return {"accounts": [self._entry(a, s) for a, s in self._service().suspected()]}

    def all_accounts(self) -> dict:
        return {"accounts": [self._entry(a, s) for a, s in self._service().store.accounts()]}

    def show(self, account: str) -> dict:
        entry = self._entry(account, self._service().store.get(account))
        entry["key"] = self._key(account)
        entry["settings"] = self._service().settings.to_dict()
        return entry

    def _key(self, account: str) -> dict | None:
        if self.keys is None:
            return None
        return self.keys.list().get(account)

    def clear(self, account: str) -> dict:
        service = self._service()
        before = service.store.get(account)
        state = service.clear(account)
        if self.audit is not None:
            self.audit.event(
                "cleared",
                account,
                before,
                by="admin-api",
                suspected_at_query=before.suspected_at_query,
            )
        return {"account": account, "before": before.to_dict(), "state": state.to_dict()}

    def confirm(self, account: str) -> dict:
        """The operator confirms a suspicion, where the service offers it (graded response)."""
        service = self._service()
        confirm = getattr(service, "confirm", None)
        if confirm is None:
            raise AdminError(HTTPStatus.NOT_IMPLEMENTED, "this account test has nothing to confirm")
        state = confirm(account)
        if self.audit is not None:
            self.audit.event("confirmed", account, state, by="admin-api")
        return self._entry(account, state)

    def revoke(self, account: str) -> dict:
        if self.keys is None:
            raise AdminError(HTTPStatus.CONFLICT, "this gateway runs without keys (anonymous)")
        try:
            self.keys.revoke(account)
        except KeyStoreError as exc:
            raise AdminError(HTTPStatus.NOT_FOUND, str(exc)) from None
        except OSError as exc:  # e.g. a read-only Secret volume in Kubernetes
            raise AdminError(
                HTTPStatus.CONFLICT, f"cannot write the key file {self.keys.path}: {exc}"
            ) from None
        self.keys.refresh()  # effective now, and logged as key_revoked
        return {"account": account, "revoked": True}

    def reload_keys(self) -> dict:
        if self.keys is not None:
            self.keys.refresh()
        return {"reloaded": self.keys is not None}

    def route(self, method: str, path: str) -> dict:
        """Dispatch one call; raises :class:`AdminError` for what it cannot answer."""
        simple: dict[tuple[str, str], Callable[[], dict]] = {
            ("GET", "/v1/suspected"): self.suspected,
            ("GET", "/v1/accounts"): self.all_accounts,
            ("POST", "/v1/keys/reload"): self.reload_keys,
        }
        if (method, path) in simple:
            return simple[(method, path)]()
        match = _ACCOUNT_PATH.match(path)
        if match is None:
            raise AdminError(HTTPStatus.NOT_FOUND, f"no admin call {method} {path}")
        account, action = match.groups()
        if not ACCOUNT_NAME.match(account) and not account.startswith("peer:"):
            raise AdminError(HTTPStatus.BAD_REQUEST, f"not an account name: {account!r}")
        calls = {("GET", None): self.show, ("POST", "clear"): self.clear}
        calls[("POST", "confirm")] = self.confirm
        calls[("POST", "revoke")] = self.revoke
        if (method, action) not in calls:
            raise AdminError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {path} is not allowed")
        return calls[(method, action)](account)


class _Handler(BaseHTTPRequestHandler):
    server: _AdminHttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.info("admin %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))  # no call takes a body; drain it
        try:
            self._authorize()
            status, body = HTTPStatus.OK, self.server.api.route(method, self.path.split("?")[0])
        except AdminError as exc:
            status, body = exc.status, {"error": exc.message}
        except StoreUnavailable as exc:
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}
        data = (json.dumps(body, indent=1) + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorize(self) -> None:
        value = self.headers.get("authorization", "")
        given = value[7:].strip() if value.lower().startswith("bearer ") else ""
        try:
            token = read_token(self.server.token_file)  # re-read: rotation needs no restart
        except (OSError, ValueError) as exc:
            raise AdminError(HTTPStatus.SERVICE_UNAVAILABLE, f"admin token: {exc}") from None
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise AdminError(HTTPStatus.UNAUTHORIZED, "admin token required (not an API key)")


class _AdminHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: AdminApi, token_file: Path) -> None:
        super().__init__(address, _Handler)
        self.api = api
        self.token_file = token_file


class AdminServer:
    """The admin API on ``listen`` (host:port; port 0: any free one), in a thread."""

    def __init__(self, listen: str, token_file: Path, api: AdminApi) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not is_loopback(host):
            log.warning(
                "admin API on %s: reachable beyond this host; keep it off the internet", host
            )
        try:
            ensure_token(token_file)
        except ValueError as exc:
            raise OSError(str(exc)) from None
        self.token_file = Path(token_file)
        self._http = _AdminHttpServer((host, int(port)), api, self.token_file)
        self.host = host
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> AdminServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


class AdminClient:
    """``same-accounts``' side of the admin API."""

    def __init__(self, url: str, token_file: Path, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token_file = Path(token_file)
        self.timeout_s = timeout_s

    def call(self, method: str, path: str) -> dict:
        try:
            token = read_token(self.token_file)
        except (OSError, ValueError) as exc:
            raise AdminUnavailable(
                f"admin token {self.token_file}: {exc} (the gateway writes it at its first start; "
                "give --admin-token-file, or --redis URL to read shared state directly)"
            ) from None
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=b"" if method == "POST" else None,
            headers={"authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise AdminUnavailable(f"gateway admin API: {message} (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminUnavailable(
                f"cannot reach the gateway's admin API at {self.url}: {exc} (is the gateway "
                "running? --admin URL, or --redis URL for shared state)"
            ) from None


class AdminUnavailable(RuntimeError):
    """The admin API could not be reached, refused the token, or answered an error."""
