"""KServe v2 tensors over HTTP: datatypes, JSON ``data`` to raw bytes and back, and the binary
tensor extension's framing.

gRPC carries tensors as raw bytes (little-endian, row-major; BYTES as 4-byte-length-prefixed
elements), so a JSON tensor is checked and encoded here into exactly what a gRPC client would
send, and an answer's raw bytes are decoded back into JSON. Values a datatype cannot hold are
refused (400) here rather than wrapped or rounded silently by numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from .errors import RestError

# Binary tensor extension: the length of the JSON part; binary tensor data follows it.
HEADER_LENGTH = "Inference-Header-Content-Length"
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


def bytes_element(value: bytes) -> bytes:
    """One element of a BYTES tensor as raw bytes: its length (4 bytes, little-endian) first."""
    return len(value).to_bytes(4, "little") + value


def json_tensor_bytes(name: str, datatype: str, count: int, data: Any) -> bytes:
    """The raw (little-endian, row-major) bytes of a tensor given as JSON ``data``."""
    flat: list = []
    _flatten(data if isinstance(data, list) else [data], flat)
    if len(flat) != count:
        raise RestError(
            400, f"input {name!r}: data has {len(flat)} elements, its shape needs {count}"
        )
    if datatype == "BYTES":
        if not {type(v) for v in flat} <= {str}:
            raise RestError(400, f"input {name!r}: BYTES data must be strings")
        return b"".join(bytes_element(v.encode()) for v in flat)
    if datatype == "BF16":  # numpy has no bfloat16 to encode it with
        raise RestError(400, f"input {name!r}: BF16 data must be sent as binary data")
    dtype = _NUMPY[datatype]
    if dtype.kind == "b":
        return _bool_bytes(name, flat)
    if dtype.kind in "iu":
        return _integer_bytes(name, datatype, dtype, flat)
    return _float_bytes(name, datatype, dtype, flat)


def _bool_bytes(name: str, flat: list) -> bytes:
    # JSON 0/1 would pass numpy's conversion: only true/false are booleans.
    if not {type(v) for v in flat} <= {bool}:
        raise RestError(400, f"input {name!r}: BOOL data must be true/false")
    return np.asarray(flat, dtype=np.bool_).tobytes()


def _integer_bytes(name: str, datatype: str, dtype: np.dtype, flat: list) -> bytes:
    # Checked against the type's range first: numpy would wrap or raise its own message.
    if not {type(v) for v in flat} <= {int}:
        raise RestError(400, f"input {name!r}: {datatype} data must be integers")
    info = np.iinfo(dtype)
    if flat and not (info.min <= min(flat) and max(flat) <= info.max):
        raise RestError(400, f"input {name!r}: a value is out of range for {datatype}")
    return np.asarray(flat, dtype=dtype).tobytes()


def _float_bytes(name: str, datatype: str, dtype: np.dtype, flat: list) -> bytes:
    if not {type(v) for v in flat} <= {int, float}:
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


def output_bytes(tensor: service_pb2.ModelInferResponse.InferOutputTensor) -> bytes:
    """Raw bytes of an output Triton sent in typed ``contents`` rather than raw."""
    values = getattr(tensor.contents, _CONTENTS_FIELD.get(tensor.datatype, "bytes_contents"))
    if tensor.datatype == "BYTES":
        return b"".join(bytes_element(v) for v in values)
    return np.asarray(list(values), dtype=_NUMPY[tensor.datatype]).tobytes()


def raw_to_json(raw: bytes, datatype: str) -> list:
    """An output's raw bytes as the flat JSON ``data`` list of its datatype."""
    if datatype == "BYTES":
        values, i = [], 0
        while i + 4 <= len(raw):
            n = int.from_bytes(raw[i : i + 4], "little")
            values.append(raw[i + 4 : i + 4 + n].decode(errors="replace"))
            i += 4 + n
        return values
    return np.frombuffer(raw, dtype=_NUMPY[datatype]).tolist()
