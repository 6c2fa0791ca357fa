"""The gateway's KServe v2 HTTP/REST front end: the same rules as its gRPC side, for ``same``.

A REST request is translated into the gRPC protobuf Triton's gRPC port takes and goes through
:class:`~..rules.GatewayCore`, the one implementation of the rules (key, public models, the
account layer, throttle, metrics); the protobuf answer is translated back. This module is the
aiohttp server; the paths are routed in :mod:`.routes`, bodies translated in
:mod:`.codec` and tensors encoded in :mod:`.tensors`. Served:

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (no key), ``GET /v2`` (server metadata);
- ``GET /v2/models/<m>[/versions/<v>]`` (metadata), ``.../ready``,
  ``POST .../infer`` with JSON tensors or the binary tensor extension
  (``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``,
  ``binary_data_output``), for the public models only.

Everything else (repository control, statistics, model config, trace, logging, shared memory)
is refused with ``{"error": "..."}``: 401 without a valid key (checked before anything else
but the health probes), 403 for what this endpoint does not expose, 404 for unknown paths,
400 for a malformed request, 413 for a body over 64 MiB, 429 when throttled, 503 when Triton
is down. The server is aiohttp (a dependency of ``tritonclient[http]``) on its own event loop
thread; decoding, the rules and the upstream call run in a thread pool, off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from ..rules import MAX_MESSAGE_BYTES, Caller, GatewayCore, GatewayError
from .codec import infer_request, infer_response, metadata_json, upstream_request
from .errors import HTTP_STATUS, RestError, http_message
from .routes import Route, route
from .tensors import HEADER_LENGTH

log = logging.getLogger("same.gateway")

# Request compression tritonclient offers (request_compression_algorithm); aiohttp inflates it.
_ENCODINGS = ("identity", "gzip", "deflate")


def _peer(request: web.Request) -> str:
    """The caller's address in gRPC's peer form, so both front ends key anonymous accounts
    alike: "ipv4:127.0.0.1:53412", "ipv6:[::1]:53412"."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    if not peername:
        return "unknown:unknown:0"
    host, port = peername[0], peername[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise OSError(f"HTTP listen address must be host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _ProtocolLog(logging.LoggerAdapter):
    """aiohttp logs every request it cannot parse (garbage, oversized headers, a TLS hello)
    with a traceback at ERROR, after answering it 400: a scanner would flood the log. One
    line at WARNING says the same; handler errors are caught and logged in ``_handle``."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        self.logger.warning(f"{msg}: %s", *args, error)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class RestFrontEnd:
    """KServe v2 HTTP on ``listen`` (host:port; port 0: any free one), rules from ``core``."""

    def __init__(
        self,
        core: GatewayCore,
        listen: str,
        workers: int = 32,
        max_body_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes
        host, port = _split_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bound here, as grpc binds in add_insecure_port: a busy port fails at construction.
        self._sock = socket.create_server((host, port), family=family, backlog=512)
        self.port: int = self._sock.getsockname()[1]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="same-rest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> RestFrontEnd:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=self.max_body_bytes)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(
                app,
                access_log=None,
                shutdown_timeout=5.0,
                logger=_ProtocolLog(logging.getLogger("same.gateway.http"), {}),
            )
            try:
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.SockSite(runner, self._sock).start())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(runner.cleanup())  # stop listening, close connections
                # Handlers of idle keep-alive connections may still be parked: end them here
                # rather than leave tasks that complain when the closed loop is collected.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=serve, name="same-gateway-http", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise OSError(f"gateway HTTP front end failed to start: {failure[0]}")
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(grace_s + 10.0)
        self._loop = self._thread = None
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except RestError as exc:
            return _error(exc.status, exc.message)
        except GatewayError as exc:
            headers = None
            if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED and self.core.throttle is not None:
                headers = {"Retry-After": str(math.ceil(1.0 / self.core.throttle.rate))}
            return _error(HTTP_STATUS.get(exc.code, 500), http_message(exc.message), headers)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over the limit of {self.max_body_bytes} bytes")
        except Exception:  # a bug here must cost one request, never the front end
            log.exception("HTTP %s %s failed", request.method, request.path)
            return _error(500, "internal gateway error")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        segments = [unquote(s) for s in request.rel_url.raw_path.strip("/").split("/")]
        where = f"{request.method} {request.path}"
        target = route(segments)
        caller = Caller(
            metadata=[(k.lower(), v) for k, v in request.headers.items()], peer=_peer(request)
        )
        if target is None:
            # Unknown paths still need the key, so a caller without one learns nothing.
            await self._run(self.core.authenticate, "", caller)
            raise RestError(404, f"no such endpoint: {where}")
        account = await self._run(self.core.authenticate, target.method, caller)
        if request.method not in target.allowed:
            raise RestError(405, f"{where}: use {' or '.join(target.allowed)}")
        if target.refused is not None:
            subject = f" of model {target.model!r}" if target.model else ""
            reason = f"{target.refused}{subject} is not exposed by this endpoint ({where})"
            raise self.core.deny(target.method, caller, reason)
        if target.method == "ModelInfer":
            # The model is known from the path: refuse before reading and decoding the body.
            # core.handle checks it again on the translated request, as for gRPC.
            reason = self.core.policy.check_model(target.model)
            if reason is not None:
                raise self.core.deny(target.method, caller, reason)
            body = await self._body(request)
            header_length = request.headers.get(HEADER_LENGTH)
            content, headers = await self._run(
                self._infer, target, body, header_length, caller, account
            )
            return web.Response(body=content, headers=headers)
        grpc_request = upstream_request(target)
        answer = await self._run(self.core.handle, target.method, grpc_request, caller, account)
        return self._render(target, answer)

    def _render(self, target: Route, answer: bytes) -> web.Response:
        try:
            if target.method == "ServerLive":
                ok = service_pb2.ServerLiveResponse.FromString(answer).live
                return web.Response() if ok else _error(503, "server is not live")
            if target.method == "ServerReady":
                ok = service_pb2.ServerReadyResponse.FromString(answer).ready
                return web.Response() if ok else _error(503, "server is not ready")
            if target.method == "ModelReady":
                if service_pb2.ModelReadyResponse.FromString(answer).ready:
                    return web.Response()
                return _error(503, f"model {target.model!r} is not ready")
            return web.json_response(metadata_json(target.method, answer))
        except DecodeError:
            return _error(502, "inference server sent an answer the gateway cannot read")

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise RestError(413, f"request body over the limit of {self.max_body_bytes} bytes")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in _ENCODINGS:
            known = ", ".join(_ENCODINGS[1:])
            raise RestError(415, f"Content-Encoding {encoding!r} is not supported ({known})")
        try:
            # aiohttp inflates gzip/deflate as it reads and stops at client_max_size, counted
            # after inflating: a small compressed body cannot grow past the limit (413).
            return await request.read()
        except RequestPayloadError as exc:
            raise RestError(400, f"request body could not be read ({encoding}): {exc}") from None
        except ConnectionResetError:  # the client hung up mid-body: nobody to answer
            raise RestError(400, "connection lost while reading the request body") from None

    def _infer(
        self, target: Route, body: bytes, header_length: str | None, caller: Caller, account: str
    ) -> tuple[bytes, dict[str, str]]:
        message, plan = infer_request(target.model, target.version, body, header_length)
        answer = self.core.handle("ModelInfer", message.SerializeToString(), caller, account)
        return infer_response(answer, plan)

    async def _run(self, fn, *args):
        """Run blocking work (key check, decoding, the upstream call) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
