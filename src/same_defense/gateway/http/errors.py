"""How the HTTP front end fails a request: :class:`RestError` for what it cannot translate, the
HTTP status for each gRPC status that the rules or Triton answer with, and their messages
worded for an HTTP caller (:func:`http_message`)."""

from __future__ import annotations

import re

import grpc


class RestError(Exception):
    """A request this front end cannot translate: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# gRPC status (from the rules or from Triton) -> HTTP status, as Triton's own HTTP maps them.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


# Triton appends this note to a shape error; over HTTP the caller sends a JSON shape, not a
# model config, so the note about max_batch_size misleads (it fits a 1x28x28 request copied
# for a 3x32x32 model no better).
_BATCH_NOTE = re.compile(r"\s*NOTE: Setting a non-zero max_batch_size.*", re.DOTALL)
_SHAPE_HINT = (
    " (the shape is [N, C, H, W], batch first, as GET /v2/models/same reports; "
    "`same-client example-request` prints a request that fits)"
)


def http_message(message: str) -> str:
    """A message of the gRPC side worded for an HTTP caller: headers, not gRPC metadata."""
    message = message.replace(
        "send metadata 'authorization: Bearer <key>'",
        "send the header 'Authorization: Bearer <key>'",
    )
    if _BATCH_NOTE.search(message):
        message = _BATCH_NOTE.sub("", message).rstrip() + _SHAPE_HINT
    return message
