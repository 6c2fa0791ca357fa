"""The gateway's gRPC front end and its server: a byte-forwarding proxy for Triton's
``inference.GRPCInferenceService``.

:class:`_Handler` hands every call of that service, as serialised bytes, to
:class:`~.rules.GatewayCore` (the rules, shared with the HTTP front end in :mod:`.http`) and
turns a :class:`~.rules.GatewayError` into a gRPC abort. :class:`GatewayServer` wires the
rules, both front ends and the metrics together; it is what :mod:`.cli` and :mod:`.deployment`
start.
"""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2

from ..accounts import AccountService
from ..accounts.admin import DEFAULT_ADMIN_LISTEN, DEFAULT_TOKEN_FILE, AdminApi, AdminServer
from ..accounts.audit import AuditLog, ExpiryWatch, key_changes
from .accounting import Authenticator, SuspectLane, Throttle
from .metrics import GatewayMetrics
from .rules import (
    MAX_MESSAGE_BYTES,
    SERVICE,
    AccountRules,
    Caller,
    GatewayCore,
    GatewayError,
    GatewayPolicy,
)
from .upstream import UpstreamChannels

# Metadata that describes the hop, not the request, and the client's API key (it ends at the
# gateway: Triton never sees or logs it): not forwarded.
_HOP_HEADERS = {
    "user-agent",
    "grpc-accept-encoding",
    "grpc-encoding",
    "te",
    "content-type",
    "authorization",
}

log = logging.getLogger("same.gateway")


@dataclass
class AdminOptions:
    """Where the operator's admin API listens (loopback by default) and its token file."""

    listen: str = DEFAULT_ADMIN_LISTEN
    token_file: Path = field(default_factory=lambda: DEFAULT_TOKEN_FILE)


class _Handler(grpc.GenericRpcHandler):
    """The gRPC front end: bytes in, bytes out, the rules in :class:`GatewayCore`."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    def service(self, details: grpc.HandlerCallDetails):
        if not details.method.startswith(SERVICE):
            return None  # other services: UNIMPLEMENTED, as from any gRPC server
        method = details.method[len(SERVICE) :]
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._forward(method, request, context)
        )  # bytes in, bytes out: no (de)serialisers

    def _forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = context.invocation_metadata()

        def time_left() -> float | None:
            remaining = context.time_remaining()
            # No client deadline shows up as ~2**63 s, which gRPC cannot pass on: drop it.
            return remaining if remaining is not None and remaining < 1e9 else None

        caller = Caller(
            metadata=metadata,
            peer=context.peer(),
            forward=[(k, v) for k, v in metadata if k not in _HOP_HEADERS],
            time_left=time_left,
        )
        try:
            return self.core.call(method, request, caller)
        except GatewayError as exc:
            context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises


class GatewayServer:
    """Listen on ``listen`` (host:port, gRPC) and, with ``http_listen``, on a KServe v2
    HTTP/REST port too; forward allowed calls to Triton's gRPC port at ``upstream``."""

    def __init__(
        self,
        listen: str,
        upstream: str,
        policy: GatewayPolicy | None = None,
        workers: int = 32,
        auth: Authenticator | None = None,
        accounts: AccountService | None = None,
        metrics_port: int | None = None,
        throttle: Throttle | None = None,
        http_listen: str | None = None,
        metrics_host: str = "127.0.0.1",
        admin: AdminOptions | None = None,
        audit: AuditLog | None = None,
        rules: AccountRules | None = None,
        lane: SuspectLane | None = None,
    ) -> None:
        """``auth`` is required: a key store, or the explicit anonymous mode. ``accounts``
        enables the account-level defense (None: per-query SAME only). ``metrics_port``
        serves the gateway's Prometheus metrics on ``metrics_host`` (loopback unless told;
        port 0: any free one). ``http_listen`` (host:port, port 0: any free one) adds the
        HTTP front end, which goes through the same rules (None: gRPC only). ``upstream``
        is one Triton address, several separated by commas (round robin), or ``dns:///``.
        ``admin`` starts the operator's admin API on its own address; ``audit`` records
        every change of an account's standing; ``lane`` bounds how many requests of accounts
        under suspicion reach Triton at once (None: no bound)."""
        if auth is None:
            raise ValueError("the gateway needs an Authenticator (API keys or anonymous=True)")
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self.policy = policy or GatewayPolicy()
        self.listen = listen
        self.upstream = upstream
        self.accounts = accounts
        self.metrics = GatewayMetrics()
        if accounts is not None:
            accounts.on_suspicion.append(lambda *_: self.metrics.suspicions.inc())
            self.metrics.watch_population(accounts)
        self.audit = audit
        self._policy_name: str | None = None
        if audit is not None:
            self._wire_audit(audit, auth, accounts)
        self._channel = UpstreamChannels(upstream, options)
        self.core = GatewayCore(
            self._channel, self.policy, auth, accounts, self.metrics, throttle, rules, lane
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
        self._server.add_generic_rpc_handlers((_Handler(self.core),))
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0:
            self._channel.close()
            raise OSError(f"gateway cannot listen on {listen}")
        self.http = None
        if http_listen is not None:
            from .http.server import RestFrontEnd  # aiohttp: loaded only when HTTP is served

            try:
                self.http = RestFrontEnd(self.core, http_listen, workers=workers)
            except OSError as exc:
                self._channel.close()
                raise OSError(f"gateway cannot listen on {http_listen} (HTTP): {exc}") from exc
        self.metrics_port = (
            self.metrics.serve(metrics_port, metrics_host) if metrics_port is not None else None
        )
        self.admin = None
        if admin is not None:
            self._check_admin_address(admin.listen, http_listen)
            api = AdminApi(accounts, auth.keys, audit)
            try:
                self.admin = AdminServer(admin.listen, admin.token_file, api)
            except OSError as exc:
                self._channel.close()
                raise OSError(
                    f"admin API cannot listen on {admin.listen} ({exc.strerror or exc}): "
                    "another gateway on this host has it; give this one --admin-listen "
                    "HOST:PORT or --no-admin"
                ) from exc

    def _check_admin_address(self, listen: str, http_listen: str | None) -> None:
        """The admin API never shares a port with the public front ends."""
        port = int(listen.rpartition(":")[2] or 0)
        public = {self.port, self.http_port}
        if port and port in public:
            self._channel.close()
            raise OSError(f"admin API on {listen}: that port is a public one ({http_listen})")

    def _wire_audit(
        self, audit: AuditLog, auth: Authenticator, accounts: AccountService | None
    ) -> None:
        if audit.policy is None:
            audit.policy = self._defense_policy
        if accounts is not None:
            watch = ExpiryWatch(accounts.store, accounts.settings, audit, accounts.clock)
            accounts.store = watch
            accounts.on_suspicion.append(
                lambda account, state: audit.suspected(account, state, tier=watch.tier(state))
            )
            accounts.on_drift.append(
                lambda held, now: audit.event("drift", "*population*", held=sorted(held))
            )
        if auth.keys is not None:
            if audit.group_of is None:
                audit.group_of = getattr(auth.keys, "group_of", None)

            def keys_changed(before: dict, after: dict) -> None:
                for kind, account in key_changes(before, after):
                    audit.event(kind, account, key_file=str(auth.keys.path))

            auth.keys.on_change.append(keys_changed)
            try:
                auth.keys.refresh()  # the baseline, so the first change is seen as one
            except Exception as exc:  # a broken key file: the first call reports it
                log.warning("key file: %s", exc)

    def _defense_policy(self) -> str | None:
        """The response policy Triton's ``defense`` step applies (its config), for the audit
        trail; asked once, None while Triton cannot say."""
        if self._policy_name is not None:
            return self._policy_name
        request = service_pb2.ModelConfigRequest(name="defense").SerializeToString()
        try:
            call = self._channel.unary_unary(SERVICE + "ModelConfig")
            metadata = [self.policy.upstream_header] if self.policy.upstream_header else []
            raw = call(request, metadata=metadata, timeout=2.0)
        except grpc.RpcError:
            return None
        config = service_pb2.ModelConfigResponse.FromString(raw).config
        parameter = config.parameters.get("policy")
        self._policy_name = parameter.string_value if parameter is not None else ""
        return self._policy_name or None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def start(self) -> GatewayServer:
        self._server.start()
        if self.http is not None:
            self.http.start()
        if self.admin is not None:
            self.admin.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        if self.http is not None:
            self.http.stop(grace_s)
        self._server.stop(grace_s).wait()
        if self.admin is not None:
            self.admin.stop()
        self._channel.close()
        self.metrics.close()
        if self.audit is not None:
            self.audit.close()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
