"""The gateway's gRPC front end and its server: a byte-forwarding proxy for Triton's
``inference.GRPCInferenceService``.

:class:`_Handler` hands every call of that service, as serialised bytes, to
:class:`~.rules.GatewayCore` (the rules, shared with the HTTP front end in :mod:`.rest`) and
turns a :class:`~.rules.GatewayError` into a gRPC abort. :class:`GatewayServer` wires the
rules, both front ends and the metrics together; it is what :mod:`.cli` and :mod:`.deployment`
start.
"""

from __future__ import annotations

from concurrent import futures

import grpc

from ..accounts import AccountService
from .accounting import Authenticator, Throttle
from .metrics import GatewayMetrics
from .rules import (
    MAX_MESSAGE_BYTES,
    SERVICE,
    Caller,
    GatewayCore,
    GatewayError,
    GatewayPolicy,
)

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

# Importers (cli, deployment, tests) take the policy and the size limit from here, with the
# server they configure.
__all__ = ["MAX_MESSAGE_BYTES", "GatewayPolicy", "GatewayServer"]


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
    ) -> None:
        """``auth`` is required: a key store, or the explicit anonymous mode. ``accounts``
        enables the account-level defense (None: per-query SAME only). ``metrics_port``
        serves the gateway's Prometheus metrics on loopback (0: any free port).
        ``http_listen`` (host:port, port 0: any free one) adds the HTTP front end, which
        goes through the same rules (None: gRPC only)."""
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
        self._channel = grpc.insecure_channel(upstream, options=options)
        self.core = GatewayCore(self._channel, self.policy, auth, accounts, self.metrics, throttle)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
        self._server.add_generic_rpc_handlers((_Handler(self.core),))
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0:
            self._channel.close()
            raise OSError(f"gateway cannot listen on {listen}")
        self.http = None
        if http_listen is not None:
            from .rest import RestFrontEnd  # aiohttp: loaded only when HTTP is served

            try:
                self.http = RestFrontEnd(self.core, http_listen, workers=workers)
            except OSError as exc:
                self._channel.close()
                raise OSError(f"gateway cannot listen on {http_listen} (HTTP): {exc}") from exc
        self.metrics_port = self.metrics.serve(metrics_port) if metrics_port is not None else None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def start(self) -> GatewayServer:
        self._server.start()
        if self.http is not None:
            self.http.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        if self.http is not None:
            self.http.stop(grace_s)
        self._server.stop(grace_s).wait()
        self._channel.close()
        self.metrics.close()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
