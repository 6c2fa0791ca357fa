"""The gateway's rules, once, for both front ends (gRPC in :mod:`.proxy`, KServe v2 HTTP in
:mod:`.http`).

Every call but liveness/readiness is authenticated first (:mod:`.accounting`); only health,
server metadata and the model calls that name a public model pass; ``ModelInfer`` is parsed
and rewritten for the account-level defense (the caller's suspicion goes to the defense step,
the internal p-value output comes back and is stripped before the client sees the answer).
Everything else is forwarded as raw bytes, and Triton's status codes and messages go back to
the caller unchanged. A refusal is a :class:`GatewayError` carrying a gRPC status code; each
front end turns it into its own protocol's error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from tritonclient.grpc import service_pb2

from ..accounts import AccountService, AccountStateUnavailable, Answered
from ..accounts.links import account_links, client_address
from ..core.layout import ACCOUNT_OUTPUT
from .accounting import (
    Authenticator,
    InternalOutputRequested,
    LaneFull,
    SuspectLane,
    Throttle,
    Unauthenticated,
    finish_infer,
    mark_review,
    prepare_infer,
)
from .metrics import GatewayMetrics

SERVICE = "/inference.GRPCInferenceService/"
FORWARDED_FOR = "x-forwarded-for"
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
# Tensor parameters that point at server-side shared memory: registering a region is refused,
# so a request naming one could only probe regions that others registered on Triton directly.
_SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size")

log = logging.getLogger("same.gateway")


class GatewayError(Exception):
    """A call the gateway refuses or could not complete; ``code`` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Caller:
    """Who is calling and what may travel upstream, independent of the front end."""

    metadata: Sequence[tuple[str, str | bytes]]  # gRPC metadata or HTTP headers (lower-case)
    peer: str  # gRPC's form, "ipv4:127.0.0.1:53412": the account in the anonymous mode
    forward: list[tuple[str, str | bytes]] = field(default_factory=list)  # to Triton
    # Seconds left of the caller's deadline (None: no deadline); asked at each upstream call.
    time_left: Callable[[], float | None] = lambda: None


@dataclass
class GatewayPolicy:
    public_models: frozenset[str] = frozenset({"same"})
    # Header Triton demands for inference when started with --grpc-restricted-protocol.
    upstream_header: tuple[str, str] | None = None
    denied: int = field(default=0)

    def check_infer_request(self, request: bytes | service_pb2.ModelInferRequest) -> str | None:
        """Refuse what Triton would refuse with a confusing message: an empty batch; and
        tensors in shared memory (no client can register a region through the gateway)."""
        message = (
            service_pb2.ModelInferRequest.FromString(request)
            if isinstance(request, bytes)
            else request
        )
        for tensor in message.inputs:
            if tensor.shape and tensor.shape[0] == 0:
                return f"input {tensor.name!r} has an empty batch: send at least one sample"
        for tensor in [*message.inputs, *message.outputs]:
            if any(p in tensor.parameters for p in _SHARED_MEMORY_PARAMETERS):
                return f"tensor {tensor.name!r}: shared memory is not available on this endpoint"
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
        return self.check_model(name)

    def check_model(self, name: str) -> str | None:
        """Why a call naming model ``name`` is refused, or None for a public model."""
        if name not in self.public_models:
            allowed = ", ".join(sorted(self.public_models))
            return f"model {name!r} is not served on this endpoint (public models: {allowed})"
        return None


@dataclass(frozen=True)
class AccountRules:
    """How the gateway links callers and what it tells them (``same-gateway`` options)."""

    # Peers whose X-Forwarded-For names the client (our own load balancer); from anyone
    # else the header is ignored, since a client can write whatever it likes in it.
    trusted_proxies: tuple[str, ...] = ()
    # Tell a client whose account is reviewed or suspected (a response parameter): off by
    # default, since it also tells a thief when to switch keys.
    tell_review: bool = False
    link_accounts: bool = True  # pool evidence per network and key group


class GatewayCore:
    """Every rule of the gateway, for any front end: :meth:`call` takes a gRPC method name
    and its serialised request, and returns Triton's serialised answer or raises
    :class:`GatewayError`."""

    def __init__(
        self,
        channel: grpc.Channel,
        policy: GatewayPolicy,
        auth: Authenticator,
        accounts: AccountService | None,
        metrics: GatewayMetrics,
        throttle: Throttle | None = None,
        rules: AccountRules | None = None,
        lane: SuspectLane | None = None,
    ) -> None:
        self.channel = channel
        self.rules = rules or AccountRules()
        self.throttle = throttle
        self.lane = lane
        self.policy = policy
        self.auth = auth
        self.accounts = accounts
        self.metrics = metrics
        self._upstream: dict[str, Callable] = {}

    def authenticate(self, method: str, caller: Caller) -> str | None:
        """The caller's account (None for the open health probes)."""
        if method in OPEN_METHODS:
            return None
        try:
            return self.auth.account(tuple(caller.metadata), caller.peer)
        except Unauthenticated as exc:
            self.metrics.auth_failures.inc()
            raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None

    def deny(self, method: str, caller: Caller, reason: str) -> GatewayError:
        self.policy.denied += 1
        log.info("denied %s from %s: %s", method, caller.peer, reason)
        return GatewayError(grpc.StatusCode.PERMISSION_DENIED, reason)

    def call(self, method: str, request: bytes, caller: Caller) -> bytes:
        return self.handle(method, request, caller, self.authenticate(method, caller))

    def handle(self, method: str, request: bytes, caller: Caller, account: str | None) -> bytes:
        """:meth:`call` for a caller already authenticated as ``account`` (a front end that
        must check the key before it decodes the request's body)."""
        if method == "ModelInfer":
            return self._checked_infer(request, caller, account)
        reason = self.policy.check(method, request)
        if reason is not None:
            raise self.deny(method, caller, reason)
        response = self._upstream_call(method, request, caller)
        if method in ("ModelMetadata", "ModelConfig"):
            response = _hide_internal_output(method, response)
        return response

    def _checked_infer(self, request: bytes, caller: Caller, account: str | None) -> bytes:
        """``ModelInfer``: parsed once (it may carry megabytes) for every check and rewrite."""
        try:
            message = service_pb2.ModelInferRequest.FromString(request)
        except Exception:  # malformed protobuf: refuse rather than forward
            raise self.deny("ModelInfer", caller, "ModelInfer: malformed request") from None
        reason = self.policy.check_model(message.model_name)
        if reason is not None:
            raise self.deny("ModelInfer", caller, reason)
        problem = self.policy.check_infer_request(message)
        if problem is not None:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if account is None:  # an open method never reaches here; refuse, never serve keyless
            raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, "missing API key")
        return self._infer(account, message, caller)

    def _infer(self, account: str, request: service_pb2.ModelInferRequest, caller: Caller) -> bytes:
        samples = 0

        def answer(tier: str) -> Answered[bytes]:
            nonlocal samples
            if tier and self.throttle is not None and not self.throttle.allow(account):
                raise GatewayError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"account under review: limited to {self.throttle.rate:g} requests/s",
                )
            prepared = prepare_infer(request, tier)
            samples = prepared.samples
            response, evidence = finish_infer(self._infer_upstream(prepared.request, tier, caller))
            if evidence is not None and len(evidence) != prepared.samples:
                evidence = None  # not this ensemble's answer: nothing to feed the test
            if tier and self.rules.tell_review:
                response = mark_review(response, tier)
            return Answered(response, evidence, prepared.hashes, prepared.sketches)

        try:
            if self.accounts is None:
                response, tier = answer("")[0], ""
            else:
                response, tier = self.accounts.serve(account, answer, self.links(account, caller))
        except InternalOutputRequested as exc:
            raise GatewayError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        except AccountStateUnavailable as exc:
            self.metrics.state_errors.inc()
            raise GatewayError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        self.metrics.observe(account, samples, tier)
        return response

    def _infer_upstream(self, request: bytes, tier: str, caller: Caller) -> bytes:
        """Triton's answer; an account under suspicion waits for its turn in the lane."""
        if not tier or self.lane is None:
            return self._upstream_call("ModelInfer", request, caller)
        try:
            with self.lane.slot(caller.time_left()):
                return self._upstream_call("ModelInfer", request, caller)
        except LaneFull as exc:
            raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except TimeoutError as exc:
            raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)) from None

    def links(self, account: str, caller: Caller) -> tuple[str, ...]:
        """The caller's network and its key's group: the states its evidence also feeds."""
        if not self.rules.link_accounts:
            return ()
        forwarded = next((v for k, v in caller.metadata if k.lower() == FORWARDED_FOR), None)
        if isinstance(forwarded, bytes):
            forwarded = forwarded.decode(errors="replace")
        address = client_address(caller.peer, forwarded, self.rules.trusted_proxies)
        keys = self.auth.keys
        return account_links(address, keys.group_of(account) if keys is not None else None)

    def _upstream_call(self, method: str, request: bytes, caller: Caller) -> bytes:
        call = self._upstream.get(method)
        if call is None:
            call = self.channel.unary_unary(SERVICE + method)
            self._upstream[method] = call
        metadata = list(caller.forward)
        if self.policy.upstream_header is not None:
            metadata.append(self.policy.upstream_header)
        try:
            return call(request, metadata=metadata, timeout=caller.time_left())
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"inference server unavailable behind the gateway: {details}"
            raise GatewayError(code, details) from None


def _hide_internal_output(method: str, response: bytes) -> bytes:
    """Drop the internal output from a model's metadata/config: clients may not ask for it,
    so listing it would only invite a refused request."""
    if method == "ModelMetadata":
        message = service_pb2.ModelMetadataResponse.FromString(response)
        outputs = message.outputs
    else:
        message = service_pb2.ModelConfigResponse.FromString(response)
        outputs = message.config.output
    kept = [o for o in outputs if o.name != ACCOUNT_OUTPUT]
    if len(kept) == len(outputs):
        return response
    del outputs[:]
    outputs.extend(kept)
    return message.SerializeToString()
