"""The gateway's connection(s) to Triton: one address, several (round robin), or ``dns:///``.

gRPC keeps one HTTP/2 connection per channel and sends every call over it, so a gateway
behind a Kubernetes ClusterIP Service (balanced per connection) talks to one Triton pod only.
Two ways to spread the calls:

- ``--upstream a:8001,b:8001``: one channel per address, calls taken in turn (round robin);
  a call that finds its replica unreachable (``UNAVAILABLE``) is tried on the next one, so a
  dead replica costs a retry, not a failure;
- ``--upstream dns:///same-triton-pods.same.svc:8001``: gRPC's own resolver and its
  ``round_robin`` policy over every address the name resolves to (a headless Service).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence

import grpc


def upstream_addresses(upstream: str) -> list[str]:
    """``"a:1,b:2"`` -> ``["a:1", "b:2"]``; a ``dns:///`` target stays one address."""
    addresses = [a.strip() for a in upstream.split(",") if a.strip()]
    if not addresses:
        raise ValueError("--upstream: give at least one Triton address (host:port)")
    return addresses


def _channel(address: str, options: Sequence[tuple[str, object]]) -> grpc.Channel:
    if address.startswith("dns:"):
        # Resolve to every pod address and balance per call; the default policy
        # (pick_first) would use one of them only.
        options = [*options, ("grpc.lb_policy_name", "round_robin")]
    return grpc.insecure_channel(address, options=list(options))


class _RoundRobinCall:
    """One method's stub on every channel; each call takes the next, retrying UNAVAILABLE."""

    def __init__(self, calls: list[Callable]) -> None:
        self._calls = calls
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def __call__(self, request: bytes, **kwargs: object) -> bytes:
        with self._lock:
            first = next(self._turn) % len(self._calls)
        for attempt in range(len(self._calls)):
            call = self._calls[(first + attempt) % len(self._calls)]
            try:
                return call(request, **kwargs)
            except grpc.RpcError as exc:
                last = attempt == len(self._calls) - 1
                if last or not hasattr(exc, "code") or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
        raise AssertionError("unreachable")


class UpstreamChannels:
    """Looks like one :class:`grpc.Channel` to :class:`~.rules.GatewayCore` (``unary_unary``
    and ``close``), over one channel per Triton address."""

    def __init__(self, upstream: str, options: Sequence[tuple[str, object]] = ()) -> None:
        self.addresses = upstream_addresses(upstream)
        self.channels = [_channel(a, options) for a in self.addresses]

    def unary_unary(self, method: str) -> Callable:
        calls = [channel.unary_unary(method) for channel in self.channels]
        return calls[0] if len(calls) == 1 else _RoundRobinCall(calls)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
