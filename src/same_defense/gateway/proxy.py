"""A byte-forwarding gRPC proxy for Triton's ``inference.GRPCInferenceService``.

Every call but liveness/readiness is authenticated first (:mod:`.accounting`). Calls are
forwarded as raw bytes; ``ModelInfer`` is parsed and rewritten for the account-level defense
(the caller's suspicion goes to the defense step, the internal p-value output comes back and is
stripped before the client sees the answer). Status codes and messages from Triton go back to
the caller unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from ..accounts import AccountService, AccountStateUnavailable
from .accounting import (
    Authenticator,
    InternalOutputRequested,
    Throttle,
    Unauthenticated,
    finish_infer,
    prepare_infer,
)
from .metrics import GatewayMetrics

SERVICE = "/inference.GRPCInferenceService/"
# Calls about the server as a whole: safe for anyone.
SERVER_METHODS = ("ServerLive", "ServerReady", "ServerMetadata")
# Health probes (load balancers, Kubernetes) need no key; everything else does.
OPEN_METHODS = ("ServerLive", "ServerReady")
# Calls about one model: allowed only for the public models; value reads the model's name.
MODEL_METHODS: dict[str, Callable[[bytes], str]] = {
    "ModelReady": lambda b: service_pb2.ModelReadyRequest.FromString(b).name,
    "ModelMetadata": lambda b: service_pb2.ModelMetadataRequest.FromString(b).name,
    "ModelConfig": lambda b: service_pb2.ModelConfigRequest.FromString(b).name,
    "ModelInfer": lambda b: service_pb2.ModelInferRequest.FromString(b).model_name,
}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
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
class GatewayPolicy:
    public_models: frozenset[str] = frozenset({"same"})
    # Header Triton demands for inference when started with --grpc-restricted-protocol.
    upstream_header: tuple[str, str] | None = None
    denied: int = field(default=0)

    def check_infer_request(self, request: bytes) -> str | None:
        """Refuse what Triton would refuse with a confusing message: an empty batch."""
        message = service_pb2.ModelInferRequest.FromString(request)
        for tensor in message.inputs:
            if tensor.shape and tensor.shape[0] == 0:
                return f"input {tensor.name!r} has an empty batch: send at least one sample"
        return None

    def check(self, method: str, request: bytes) -> str | None:
        """Return why the call is refused, or None when it may pass."""
        if method in SERVER_METHODS:
            return None
        if method not in MODEL_METHODS:
            return f"{method} is not exposed by this endpoint"
        try:
            name = MODEL_METHODS[method](request)
        except Exception:  # malformed protobuf: refuse rather than forward
            return f"{method}: malformed request"
        if name not in self.public_models:
            allowed = ", ".join(sorted(self.public_models))
            return f"model {name!r} is not served on this endpoint (public models: {allowed})"
        return None


class _Handler(grpc.GenericRpcHandler):
    def __init__(
        self,
        channel: grpc.Channel,
        policy: GatewayPolicy,
        auth: Authenticator,
        accounts: AccountService | None,
        metrics: GatewayMetrics,
        throttle: Throttle | None = None,
    ) -> None:
        self.channel = channel
        self.throttle = throttle
        self.policy = policy
        self.auth = auth
        self.accounts = accounts
        self.metrics = metrics
        self._upstream: dict[str, Callable] = {}

    def service(self, details: grpc.HandlerCallDetails):
        if not details.method.startswith(SERVICE):
            return None  # other services: UNIMPLEMENTED, as from any gRPC server
        method = details.method[len(SERVICE) :]
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._forward(method, request, context)
        )  # bytes in, bytes out: no (de)serialisers

    def _forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        account = None
        if method not in OPEN_METHODS:
            try:
                account = self.auth.account(context.invocation_metadata(), context.peer())
            except Unauthenticated as exc:
                self.metrics.auth_failures.inc()
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        reason = self.policy.check(method, request)
        if reason is not None:
            self.policy.denied += 1
            log.info("denied %s from %s: %s", method, context.peer(), reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        if method == "ModelInfer":
            problem = self.policy.check_infer_request(request)
            if problem is not None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            return self._infer(account, request, context)
        return self._upstream_call(method, request, context)

    def _infer(self, account: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        samples = 0

        def answer(suspected: bool) -> tuple[bytes, np.ndarray | None, list[str]]:
            nonlocal samples
            if suspected and self.throttle is not None and not self.throttle.allow(account):
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"account under suspicion: limited to {self.throttle.rate:g} requests/s",
                )
            prepared = prepare_infer(request, suspected)
            samples = prepared.samples
            response, pvalues = finish_infer(
                self._upstream_call("ModelInfer", prepared.request, context)
            )
            if pvalues is not None and len(pvalues) != prepared.samples:
                pvalues = None  # not this ensemble's answer: nothing to feed the test
            return response, pvalues, prepared.hashes

        try:
            if self.accounts is None:
                response, suspected = answer(False)[0], False
            else:
                response, suspected = self.accounts.serve(account, answer)
        except InternalOutputRequested as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except AccountStateUnavailable as exc:
            self.metrics.state_errors.inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        self.metrics.observe(account, samples, suspected)
        return response

    def _upstream_call(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        call = self._upstream.get(method)
        if call is None:
            call = self.channel.unary_unary(SERVICE + method)
            self._upstream[method] = call
        metadata = [(k, v) for k, v in context.invocation_metadata() if k not in _HOP_HEADERS]
        if self.policy.upstream_header is not None:
            metadata.append(self.policy.upstream_header)
        try:
            remaining = context.time_remaining()
            # No client deadline shows up as ~2**63 s, which gRPC cannot pass on: drop it.
            timeout = remaining if remaining is not None and remaining < 1e9 else None
            return call(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"inference server unavailable behind the gateway: {details}"
            context.abort(code, details)


class GatewayServer:
    """Listen on ``listen`` (host:port) and forward allowed calls to Triton at ``upstream``."""

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
    ) -> None:
        """``auth`` is required: a key store, or the explicit anonymous mode. ``accounts``
        enables the account-level defense (None: per-query SAME only). ``metrics_port``
        serves the gateway's Prometheus metrics on loopback (0: any free port)."""
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
        self.metrics_port = self.metrics.serve(metrics_port) if metrics_port is not None else None
        self._channel = grpc.insecure_channel(upstream, options=options)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
        handler = _Handler(self._channel, self.policy, auth, accounts, self.metrics, throttle)
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"gateway cannot listen on {listen}")

    def start(self) -> GatewayServer:
        self._server.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        self._server.stop(grace_s).wait()
        self._channel.close()
        self.metrics.close()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
