"""The gateway's KServe v2 HTTP/REST front end: the same rules as its gRPC side, for ``same``.

A REST request is translated into the gRPC protobuf Triton's gRPC port takes and goes through
:class:`~.proxy.GatewayCore`, the one implementation of the rules (key, public models, the
account layer, throttle, metrics); the protobuf answer is translated back. Served:

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
import json
import logging
import math
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import grpc
import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from .proxy import MAX_MESSAGE_BYTES, Caller, GatewayCore, GatewayError

log = logging.getLogger("same.gateway")

HEADER_LENGTH = "Inference-Header-Content-Length"
# Request compression tritonclient offers (request_compression_algorithm); aiohttp inflates it.
_ENCODINGS = ("identity", "gzip", "deflate")
# Fixed-size tensor types; BYTES (length-prefixed strings) and BF16 (binary only) apart.
_NUMPY: dict[str, np.dtype] = {
    name: np.dtype(t)
    for name, t in {
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }.items()
}
DATATYPES = (*_NUMPY, "BF16", "BYTES")
# Where a gRPC answer keeps each type when it is not in raw_output_contents.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_MAX_NESTING = 64  # deeper "data" is no tensor anyone sends; refuse before recursing

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

# API families of Triton's HTTP protocol that this endpoint does not expose, by first segment
# after /v2: refused (403) after the key check, like their gRPC counterparts.
_REFUSED_FAMILIES = {
    "repository": "model repository control",
    "systemsharedmemory": "system shared memory",
    "cudasharedmemory": "CUDA shared memory",
    "trace": "trace settings",
    "logging": "log settings",
}
_REFUSED_MODEL_ACTIONS = {
    "config": "model config",
    "stats": "model statistics",
    "trace": "trace settings",
    "generate": "the generate extension",
    "generate_stream": "the generate extension",
}


class RestError(Exception):
    """A request this front end cannot translate: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Route:
    """A REST call as a gRPC method, or a refusal (``refused``: what is not exposed)."""

    method: str  # gRPC method name, or the HTTP one's description when refused
    model: str = ""
    version: str = ""
    refused: str | None = None
    allowed: tuple[str, ...] = ("GET",)  # HTTP methods the route takes


def route(segments: list[str]) -> Route | None:
    """The route for a decoded path (``["v2", "models", "same", "infer"]``); None: unknown."""
    if not segments or segments[0] != "v2":
        return None
    rest = segments[1:]
    if not rest:
        return Route("ServerMetadata")
    if rest in (["health", "live"], ["health", "ready"]):
        return Route("ServerLive" if rest[1] == "live" else "ServerReady")
    if rest[0] in _REFUSED_FAMILIES:
        return Route(rest[0], refused=_REFUSED_FAMILIES[rest[0]], allowed=("GET", "POST"))
    if rest[0] != "models" or len(rest) < 2:
        return None
    if rest[1:] == ["stats"]:  # every model's statistics
        return Route("stats", refused="model statistics")
    model, tail, version = rest[1], rest[2:], ""
    if tail[:1] == ["versions"]:
        if len(tail) < 2:
            return None
        version, tail = tail[1], tail[2:]
    if not tail:
        return Route("ModelMetadata", model, version)
    if len(tail) == 1 and tail[0] == "ready":
        return Route("ModelReady", model, version)
    if len(tail) == 1 and tail[0] == "infer":
        return Route("ModelInfer", model, version, allowed=("POST",))
    if tail[0] in _REFUSED_MODEL_ACTIONS:
        return Route(tail[0], model, version, _REFUSED_MODEL_ACTIONS[tail[0]], ("GET", "POST"))
    return None


# --- JSON <-> protobuf -----------------------------------------------------------------------


def _set_parameter(target: Any, key: str, value: Any, where: str) -> None:
    """Copy one JSON parameter into a protobuf ``map<string, InferParameter>``."""
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise RestError(400, f"{where} parameter {key!r}: {value} is out of range")
        if value < 2**63:
            target[key].int64_param = value
        else:
            target[key].uint64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    elif isinstance(value, str):
        target[key].string_param = value
    else:
        raise RestError(400, f"{where} parameter {key!r} must be a bool, number or string")


def _parameter_value(parameter: service_pb2.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def _parameters_json(parameters: Any) -> dict[str, Any]:
    return {k: _parameter_value(v) for k, v in parameters.items()}


def _flatten(data: Any, out: list, depth: int = 0) -> None:
    if depth > _MAX_NESTING:
        raise RestError(400, f"tensor data is nested deeper than {_MAX_NESTING} levels")
    if not any(isinstance(v, list) for v in data):
        out.extend(data)
        return
    for v in data:
        if isinstance(v, list):
            _flatten(v, out, depth + 1)
        else:
            out.append(v)


def _bytes_element(value: bytes) -> bytes:
    return len(value).to_bytes(4, "little") + value


def json_tensor_bytes(name: str, datatype: str, count: int, data: Any) -> bytes:
    """The raw (little-endian, row-major) bytes of a tensor given as JSON ``data``."""
    if not isinstance(data, list):
        data = [data]
    flat: list = []
    _flatten(data, flat)
    if len(flat) != count:
        raise RestError(
            400, f"input {name!r}: data has {len(flat)} elements, its shape needs {count}"
        )
    types = {type(v) for v in flat}
    if datatype == "BYTES":
        if not types <= {str}:
            raise RestError(400, f"input {name!r}: BYTES data must be strings")
        return b"".join(_bytes_element(v.encode()) for v in flat)
    if datatype == "BF16":
        raise RestError(400, f"input {name!r}: BF16 data must be sent as binary data")
    dtype = _NUMPY[datatype]
    if dtype.kind == "b":
        if not types <= {bool}:
            raise RestError(400, f"input {name!r}: BOOL data must be true/false")
        return np.asarray(flat, dtype=dtype).tobytes()
    if dtype.kind in "iu":
        if not types <= {int}:
            raise RestError(400, f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if flat and not (info.min <= min(flat) and max(flat) <= info.max):
            raise RestError(400, f"input {name!r}: a value is out of range for {datatype}")
        return np.asarray(flat, dtype=dtype).tobytes()
    if not types <= {int, float}:
        raise RestError(400, f"input {name!r}: {datatype} data must be numbers")
    try:
        wide = np.asarray(flat, dtype=np.float64)
    except OverflowError:  # an integer literal beyond float64
        raise RestError(400, f"input {name!r}: a value is out of range for {datatype}") from None
    # NaN/Inf written in the JSON pass on: the defense step refuses them with its own message
    # (one rule for both protocols); only finite values that the type cannot hold stop here.
    finite = wide[np.isfinite(wide)]
    if finite.size and np.abs(finite).max() > np.finfo(dtype).max:
        raise RestError(400, f"input {name!r}: a value is out of range for {datatype}")
    return wide.astype(dtype).tobytes()


def _shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise RestError(400, f"input {name!r}: shape must be a list of non-negative integers")
    return shape


@dataclass
class OutputPlan:
    """Which outputs of the answer go back as binary data (the rest as JSON)."""

    default_binary: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str, datatype: str) -> bool:
        return datatype == "BF16" or self.binary.get(name, self.default_binary)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a request (binary tensor extension)."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise RestError(
            400, f"{HEADER_LENGTH} must be an integer between 0 and the body size ({len(body)})"
        )
    return body[:length], body[length:]


def _json_object(text: bytes, what: str) -> dict:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RestError(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RestError(400, f"{what} must be a JSON object")
    return value


def infer_request(
    model: str, version: str, body: bytes, header_length: str | None
) -> tuple[service_pb2.ModelInferRequest, OutputPlan]:
    """A KServe v2 REST inference request as the gRPC ``ModelInferRequest`` (all input data
    as raw bytes, as a gRPC client sends it) and how to render the answer."""
    text, binary = split_body(body, header_length)
    spec = _json_object(text, "request")
    message = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    plan = OutputPlan()
    if "id" in spec:
        if not isinstance(spec["id"], str):
            raise RestError(400, "request 'id' must be a string")
        message.id = spec["id"]
    parameters = spec.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RestError(400, "request 'parameters' must be an object")
    for key, value in parameters.items():
        if key == "binary_data_output":  # HTTP-only: how to send the answer back
            if not isinstance(value, bool):
                raise RestError(400, "'binary_data_output' must be true or false")
            plan.default_binary = value
        else:
            _set_parameter(message.parameters, key, value, "request")
    inputs = spec.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RestError(400, "request needs a non-empty 'inputs' list")
    offset = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise RestError(400, "each input must be a JSON object")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not name:
            raise RestError(400, "each input needs a 'name' string")
        if datatype not in DATATYPES:
            known = ", ".join(DATATYPES)
            raise RestError(400, f"input {name!r}: unknown datatype {datatype!r} (one of {known})")
        shape = _shape(name, item.get("shape"))
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        params = item.get("parameters", {})
        if not isinstance(params, dict):
            raise RestError(400, f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        for key, value in params.items():
            if key != "binary_data_size":
                _set_parameter(tensor.parameters, key, value, f"input {name!r}")
        if size is not None:
            if "data" in item:
                raise RestError(400, f"input {name!r}: give 'data' or 'binary_data_size', not both")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise RestError(400, f"input {name!r}: binary_data_size must be an integer >= 0")
            if offset + size > len(binary):
                raise RestError(
                    400,
                    f"input {name!r}: binary_data_size {size} runs past the binary data "
                    f"({len(binary) - offset} bytes left)",
                )
            message.raw_input_contents.append(binary[offset : offset + size])
            offset += size
        elif "data" in item:
            count = math.prod(shape)
            message.raw_input_contents.append(
                json_tensor_bytes(name, datatype, count, item["data"])
            )
        elif not any(k.startswith("shared_memory") for k in params):
            raise RestError(400, f"input {name!r} has neither 'data' nor 'binary_data_size'")
    if offset != len(binary):
        raise RestError(
            400, f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    outputs = spec.get("outputs", [])
    if not isinstance(outputs, list):
        raise RestError(400, "request 'outputs' must be a list")
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RestError(400, "each output must be an object with a 'name' string")
        tensor = message.outputs.add(name=item["name"])
        params = item.get("parameters", {})
        if not isinstance(params, dict):
            raise RestError(400, f"output {item['name']!r}: 'parameters' must be an object")
        for key, value in params.items():
            if key == "binary_data":
                if not isinstance(value, bool):
                    raise RestError(400, f"output {item['name']!r}: binary_data must be a bool")
                plan.binary[item["name"]] = value
            else:
                _set_parameter(tensor.parameters, key, value, f"output {item['name']!r}")
    if len(message.raw_input_contents) != len(message.inputs):
        # shared-memory inputs carry no data: send none raw, so the rules refuse them clearly
        del message.raw_input_contents[:]
    return message, plan


def _output_bytes(tensor: service_pb2.ModelInferResponse.InferOutputTensor) -> bytes:
    """Raw bytes of an output Triton sent in typed ``contents`` rather than raw."""
    values = getattr(tensor.contents, _CONTENTS_FIELD.get(tensor.datatype, "bytes_contents"))
    if tensor.datatype == "BYTES":
        return b"".join(_bytes_element(v) for v in values)
    return np.asarray(list(values), dtype=_NUMPY[tensor.datatype]).tobytes()


def _raw_to_json(raw: bytes, datatype: str) -> list:
    if datatype == "BYTES":
        values, i = [], 0
        while i + 4 <= len(raw):
            n = int.from_bytes(raw[i : i + 4], "little")
            values.append(raw[i + 4 : i + 4 + n].decode(errors="replace"))
            i += 4 + n
        return values
    return np.frombuffer(raw, dtype=_NUMPY[datatype]).tolist()


def infer_response(response: bytes, plan: OutputPlan) -> tuple[bytes, dict[str, str]]:
    """Triton's gRPC answer as a KServe v2 REST body, and the headers it needs."""
    message = service_pb2.ModelInferResponse.FromString(response)
    answer: dict[str, Any] = {
        "model_name": message.model_name,
        "model_version": message.model_version,
    }
    if message.id:
        answer["id"] = message.id
    if message.parameters:
        answer["parameters"] = _parameters_json(message.parameters)
    outputs, blobs = [], []
    for i, tensor in enumerate(message.outputs):
        raw = (
            message.raw_output_contents[i]
            if i < len(message.raw_output_contents)
            else _output_bytes(tensor)
        )
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        parameters = _parameters_json(tensor.parameters)
        if plan.is_binary(tensor.name, tensor.datatype):
            parameters["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            entry["data"] = _raw_to_json(raw, tensor.datatype)
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *blobs]), headers


def _tensor_metadata(tensors: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def metadata_json(method: str, response: bytes) -> dict[str, Any]:
    if method == "ServerMetadata":
        server = service_pb2.ServerMetadataResponse.FromString(response)
        return {"name": server.name, "version": server.version, "extensions": [*server.extensions]}
    model = service_pb2.ModelMetadataResponse.FromString(response)
    return {
        "name": model.name,
        "versions": list(model.versions),
        "platform": model.platform,
        "inputs": _tensor_metadata(model.inputs),
        "outputs": _tensor_metadata(model.outputs),
    }


# --- the server ------------------------------------------------------------------------------


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
            return _error(HTTP_STATUS.get(exc.code, 500), exc.message, headers)
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
        grpc_request = {
            "ServerLive": lambda: service_pb2.ServerLiveRequest(),
            "ServerReady": lambda: service_pb2.ServerReadyRequest(),
            "ServerMetadata": lambda: service_pb2.ServerMetadataRequest(),
            "ModelMetadata": lambda: service_pb2.ModelMetadataRequest(
                name=target.model, version=target.version
            ),
            "ModelReady": lambda: service_pb2.ModelReadyRequest(
                name=target.model, version=target.version
            ),
        }[target.method]().SerializeToString()
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
