"""KServe v2 REST bodies to and from the gRPC protobufs that :class:`~.rules.GatewayCore` and
Triton take: inference requests and answers, metadata, and the requests of the other routes.

An inference request becomes the ``ModelInferRequest`` a gRPC client would send (all input
data as raw bytes), so the rules and the defense see one form from both front ends. What only
HTTP has (``binary_data_output``, ``binary_data``: how the answer is rendered) stays out of the
protobuf, in an :class:`OutputPlan`. Anything malformed is a :class:`~.errors.RestError`
(400) before the rules or Triton see it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import service_pb2

from .errors import RestError
from .routes import Route
from .tensors import (
    DATATYPES,
    HEADER_LENGTH,
    json_tensor_bytes,
    output_bytes,
    raw_to_json,
    split_body,
)


@dataclass
class OutputPlan:
    """Which outputs of the answer go back as binary data (the rest as JSON)."""

    default_binary: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str, datatype: str) -> bool:
        return datatype == "BF16" or self.binary.get(name, self.default_binary)


# --- parameters ------------------------------------------------------------------------------


def _set_parameter(target: Any, key: str, value: Any, where: str) -> None:
    """Copy one JSON parameter into a protobuf ``map<string, InferParameter>``."""
    if isinstance(value, bool):  # before int: a JSON bool is a Python int too
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


def _parameters_of(item: dict, where: str) -> dict:
    """The ``parameters`` object of an input or output (none: empty)."""
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RestError(400, f"{where}: 'parameters' must be an object")
    return parameters


def _parameters_json(parameters: Any) -> dict[str, Any]:
    return {k: _parameter_value(v) for k, v in parameters.items()}


def _parameter_value(parameter: service_pb2.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


# --- inference request -----------------------------------------------------------------------


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
    _read_request_parameters(spec, message, plan)
    _read_inputs(spec, message, binary)
    _read_outputs(spec, message, plan)
    if len(message.raw_input_contents) != len(message.inputs):
        # shared-memory inputs carry no data: send none raw, so the rules refuse them clearly
        del message.raw_input_contents[:]
    return message, plan


def _json_object(text: bytes, what: str) -> dict:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RestError(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RestError(400, f"{what} must be a JSON object")
    return value


def _read_request_parameters(
    spec: dict, message: service_pb2.ModelInferRequest, plan: OutputPlan
) -> None:
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


def _read_inputs(spec: dict, message: service_pb2.ModelInferRequest, binary: bytes) -> None:
    """Add the request's inputs; the binary part must be claimed exactly, input by input."""
    inputs = spec.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RestError(400, "request needs a non-empty 'inputs' list")
    offset = 0
    for item in inputs:
        offset = _read_input(item, message, binary, offset)
    if offset != len(binary):
        raise RestError(
            400, f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )


def _read_input(
    item: Any, message: service_pb2.ModelInferRequest, binary: bytes, offset: int
) -> int:
    """Add one input, its data read from JSON or from ``binary`` at ``offset``; returns the
    offset of the next input's binary data."""
    name, datatype, shape = _input_header(item)
    tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
    params = _parameters_of(item, f"input {name!r}")
    size = params.get("binary_data_size")
    for key, value in params.items():
        if key != "binary_data_size":  # HTTP-only: where the data is, not for Triton
            _set_parameter(tensor.parameters, key, value, f"input {name!r}")
    if size is not None:
        if "data" in item:
            raise RestError(400, f"input {name!r}: give 'data' or 'binary_data_size', not both")
        message.raw_input_contents.append(_binary_data(name, size, binary, offset))
        return offset + size
    if "data" in item:
        count = math.prod(shape)
        message.raw_input_contents.append(json_tensor_bytes(name, datatype, count, item["data"]))
    elif not any(k.startswith("shared_memory") for k in params):
        raise RestError(400, f"input {name!r} has neither 'data' nor 'binary_data_size'")
    return offset


def _input_header(item: Any) -> tuple[str, str, list[int]]:
    """An input's name, datatype and shape, checked."""
    if not isinstance(item, dict):
        raise RestError(400, "each input must be a JSON object")
    name, datatype = item.get("name"), item.get("datatype")
    if not isinstance(name, str) or not name:
        raise RestError(400, "each input needs a 'name' string")
    if datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise RestError(400, f"input {name!r}: unknown datatype {datatype!r} (one of {known})")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise RestError(400, f"input {name!r}: shape must be a list of non-negative integers")
    return name, datatype, shape


def _binary_data(name: str, size: Any, binary: bytes, offset: int) -> bytes:
    """The ``size`` bytes of binary data at ``offset`` that input ``name`` claims."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RestError(400, f"input {name!r}: binary_data_size must be an integer >= 0")
    if offset + size > len(binary):
        raise RestError(
            400,
            f"input {name!r}: binary_data_size {size} runs past the binary data "
            f"({len(binary) - offset} bytes left)",
        )
    return binary[offset : offset + size]


def _read_outputs(spec: dict, message: service_pb2.ModelInferRequest, plan: OutputPlan) -> None:
    outputs = spec.get("outputs", [])
    if not isinstance(outputs, list):
        raise RestError(400, "request 'outputs' must be a list")
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RestError(400, "each output must be an object with a 'name' string")
        name = item["name"]
        tensor = message.outputs.add(name=name)
        for key, value in _parameters_of(item, f"output {name!r}").items():
            if key == "binary_data":  # HTTP-only: how to send this output back
                if not isinstance(value, bool):
                    raise RestError(400, f"output {name!r}: binary_data must be a bool")
                plan.binary[name] = value
            else:
                _set_parameter(tensor.parameters, key, value, f"output {name!r}")


# --- answers ---------------------------------------------------------------------------------


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
            else output_bytes(tensor)
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
            entry["data"] = raw_to_json(raw, tensor.datatype)
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *blobs]), headers


def upstream_request(target: Route) -> bytes:
    """The serialised gRPC request for a route other than inference (no body to translate)."""
    return {
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


def _tensor_metadata(tensors: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def metadata_json(method: str, response: bytes) -> dict[str, Any]:
    """A server's or model's metadata answer (gRPC) as its KServe v2 REST JSON."""
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
