"""The gateway's side of the account-level defense: who is calling, and the internal output.

- :class:`Authenticator`: ``authorization: Bearer <key>`` in gRPC metadata, checked against the
  operator's :class:`~same_defense.accounts.KeyStore`; or, in the explicit anonymous mode, the
  caller's peer address is the account.
- :class:`Throttle`: the optional rate limit for accounts under suspicion.
- :class:`SuspectLane`: the default bound on how many requests of accounts under suspicion
  are at Triton at once, so that a thief's load cannot make honest users wait.
- :func:`prepare_infer` / :func:`finish_infer`: rewrite a ``ModelInfer`` on its way to Triton
  (ask for the internal ``ACCOUNT_PVALUE`` output, state the account's tier, "review" or
  "suspected", in a request parameter, which the gateway alone may set) and on its way back
  (strip that output). A client that asks for the internal output is refused; one that sends
  the parameter has it replaced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2

from ..accounts import KeyStore, sample_hashes
from ..core.accounts import ACCOUNT_OUTPUT_WIDTH
from ..core.decision import as_tier
from ..core.layout import ACCOUNT_OUTPUT, ACCOUNT_PARAMETER
from ..core.lineage import sketches

AUTH_HEADER = "authorization"
BEARER = "bearer "


class Unauthenticated(Exception):
    """No key, an unknown or a revoked one."""


class Authenticator:
    """Maps a call to its account name, or raises :class:`Unauthenticated`."""

    def __init__(self, keys: KeyStore | None = None, anonymous: bool = False) -> None:
        if (keys is None) == (not anonymous):
            raise ValueError("give a key store, or anonymous=True, not both or neither")
        self.keys = keys
        self.anonymous = anonymous

    def account(self, metadata: tuple, peer: str) -> str:
        if self.anonymous:
            # "ipv4:127.0.0.1:53412" -> "peer:127.0.0.1": one account per address, not per port
            address = peer.split(":", 1)[-1].rsplit(":", 1)[0]
            return f"peer:{address}"
        assert self.keys is not None
        values = [v for k, v in metadata if k.lower() == AUTH_HEADER]
        if not values:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        value = values[0] if isinstance(values[0], str) else values[0].decode()
        key = value[len(BEARER) :] if value.lower().startswith(BEARER) else value
        account = self.keys.authenticate(key.strip())
        if account is None:
            raise Unauthenticated("unknown or revoked API key")
        return account


@dataclass
class PreparedInfer:
    request: bytes  # what goes to Triton
    samples: int
    hashes: list[str]
    sketches: np.ndarray | None = None  # lineage sketches; None where the input is not FP32


def input_sketches(message: service_pb2.ModelInferRequest, data: bytes, samples: int):
    """The lineage sketches of a request's FP32 images, or None (another type, sizes that do
    not add up: Triton refuses those requests itself)."""
    if not message.raw_input_contents or not message.inputs or samples < 1:
        return None  # typed contents (not raw bytes) are rare: no sketch, no lineage
    if message.inputs[0].datatype != "FP32":
        return None
    if len(data) != samples * 4 * int(np.prod(message.inputs[0].shape[1:], dtype=np.int64)):
        return None
    images = np.frombuffer(data, dtype="<f4").reshape(samples, *message.inputs[0].shape[1:])
    return sketches(images if images.ndim in (2, 3, 4) else images.reshape(samples, -1))


class InternalOutputRequested(Exception):
    """A client asked for an output that stays on the server."""


def _input_bytes(message: service_pb2.ModelInferRequest) -> bytes:
    if message.raw_input_contents:
        return b"".join(message.raw_input_contents)
    return b"".join(t.contents.SerializeToString() for t in message.inputs)


def prepare_infer(
    request: bytes | service_pb2.ModelInferRequest, tier: bool | str
) -> PreparedInfer:
    """Rewrite a client's ``ModelInfer`` for Triton (raises on an internal output request).

    A parsed request is copied, not changed: the account layer may prepare it twice (as
    sent, then again at a stronger tier when its own queries raise the alarm). ``tier`` is the
    account's (:data:`~same_defense.core.TIERS`; True means "suspected").
    """
    message = service_pb2.ModelInferRequest()
    if isinstance(request, bytes):
        message.ParseFromString(request)
    else:
        message.CopyFrom(request)
    if any(o.name == ACCOUNT_OUTPUT for o in message.outputs):
        raise InternalOutputRequested(f"output {ACCOUNT_OUTPUT!r} is not available to clients")
    if ACCOUNT_PARAMETER in message.parameters:
        del message.parameters[ACCOUNT_PARAMETER]
    tier = as_tier(tier)
    if tier:
        message.parameters[ACCOUNT_PARAMETER].string_param = tier
    if message.outputs:  # none listed means "all", which includes the internal one
        message.outputs.add(name=ACCOUNT_OUTPUT)
    samples = int(message.inputs[0].shape[0]) if message.inputs and message.inputs[0].shape else 1
    data = _input_bytes(message)
    try:
        hashes = sample_hashes(data, samples)
    except ValueError:  # malformed sizes: Triton refuses the request; hash it whole
        hashes = sample_hashes(data, 1) * samples
    return PreparedInfer(
        message.SerializeToString(), samples, hashes, input_sketches(message, data, samples)
    )


def finish_infer(response: bytes) -> tuple[bytes, np.ndarray | None]:
    """Strip the internal output from Triton's answer; return it as float64 ``[N, 4]``
    evidence (p-value, predicted class, flag, top-1 probability per query; repositories built
    before write ``[N, 3]`` or ``[N]``, which the account test still reads)."""
    message = service_pb2.ModelInferResponse.FromString(response)
    names = [o.name for o in message.outputs]
    if ACCOUNT_OUTPUT not in names:
        return response, None
    i = names.index(ACCOUNT_OUTPUT)
    shape = list(message.outputs[i].shape)
    if message.raw_output_contents:
        values = np.frombuffer(message.raw_output_contents[i], dtype=np.float32)
        del message.raw_output_contents[i]
    else:
        values = np.asarray(message.outputs[i].contents.fp32_contents, dtype=np.float32)
    del message.outputs[i]
    evidence = values.astype(np.float64)
    if len(shape) == 2 and shape[1] in (3, ACCOUNT_OUTPUT_WIDTH):
        evidence = evidence.reshape(-1, shape[1])
    return message.SerializeToString(), evidence


# The response parameter that tells a client its account is under review (``--tell-review``).
REVIEW_PARAMETER = "same_account_review"


def mark_review(response: bytes, tier: str) -> bytes:
    """Add ``same_account_review: <tier>`` to a ``ModelInferResponse``'s parameters."""
    message = service_pb2.ModelInferResponse.FromString(response)
    message.parameters[REVIEW_PARAMETER].string_param = tier
    return message.SerializeToString()


class Throttle:
    """Token bucket per account: at most ``rate`` requests/s (bursts of ``burst``) for an
    account under suspicion, on top of the response policy. In this gateway's memory: with
    several gateways each allows ``rate`` (the policy itself is shared through Redis)."""

    def __init__(self, rate: float, burst: float = 1.0, clock=time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, account: str) -> bool:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(account, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[account] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


class LaneFull(Exception):
    """Too many requests of accounts under suspicion are already waiting at this gateway."""


class SuspectLane:
    """At most ``in_flight`` requests of accounts under suspicion (tier "review" or
    "suspected") at Triton at once, per gateway; up to ``waiting`` more wait for their turn,
    beyond that they are refused (:class:`LaneFull`).

    Without it a thief's closed loop of large batches takes as much of Triton as it asks
    for, and every honest request queues behind it (honest p50 rose 6x under four attacker
    users; issue 20). Honest accounts never enter the lane. Suspected ones are still answered
    (with the policy), only one at a time; the waiting bound keeps them from holding every
    worker thread of the gateway.
    """

    def __init__(self, in_flight: int = 1, waiting: int = 8) -> None:
        if in_flight < 1 or waiting < 0:
            raise ValueError(f"need in_flight >= 1 and waiting >= 0, got {in_flight}, {waiting}")
        self.in_flight, self.waiting = in_flight, waiting
        self._slots = threading.Semaphore(in_flight)
        self._lock = threading.Lock()
        self._occupancy = 0  # in flight + waiting

    @contextmanager
    def slot(self, timeout_s: float | None = None) -> Iterator[None]:
        """Hold one of the in-flight places for the duration of the block; raises
        :class:`LaneFull` when the lane is full, TimeoutError when ``timeout_s`` (the caller's
        deadline) passes first."""
        with self._lock:
            if self._occupancy >= self.in_flight + self.waiting:
                # Worded without the tier: the review is told only with --tell-review.
                raise LaneFull(
                    f"too many requests are waiting at this gateway ({self.waiting}); retry later"
                )
            self._occupancy += 1
        try:
            if not self._slots.acquire(timeout=timeout_s):
                raise TimeoutError("deadline passed while waiting behind other suspected requests")
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._occupancy -= 1
