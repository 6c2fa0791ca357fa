"""The gateway's public KServe v2 HTTP endpoint, and every port of the default deployment.

One default ProtectedService (Triton on loopback, gRPC only, keyed; the gateway on a gRPC and
an HTTP port) serves the module. From the public side over HTTP: `same` answers exactly what
it answers over gRPC, JSON or binary; other models, repository control, statistics and the
rest are refused; bad requests get a 4xx with a clear message and the next good one is served;
keys, the account layer and the throttle apply as on gRPC. Then `victim` is tried on every
port the deployment opens, over both protocols.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
import zlib

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from same_harness.data.queries import make_query_set
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from same_defense.accounts import KeyStore
from same_defense.core.layout import ACCOUNT_OUTPUT
from same_defense.core.manifest import read_manifest
from same_defense.gateway.accounting import Authenticator, Throttle
from same_defense.gateway.http.codec import OutputPlan, infer_request, infer_response
from same_defense.gateway.http.errors import RestError
from same_defense.gateway.http.routes import route
from same_defense.gateway.http.tensors import HEADER_LENGTH
from same_defense.gateway.options import AccountOptions
from same_defense.gateway.proxy import GatewayServer
from same_defense.gateway.rules import MAX_MESSAGE_BYTES, GatewayPolicy
from same_defense.ports import free_port
from same_defense.serving.deployment import ProtectedService

from .servers import PROJECT_ROOT, protected_service

SHAPE = (1, 28, 28)
IMAGE_BYTES = int(np.prod(SHAPE)) * 4
NAMES = ("alice", "mallory", "thief")


class Deployment:
    def __init__(self, repository, work):
        self.keys = KeyStore(work / "keys.json")
        self.key = {name: self.keys.add(name) for name in NAMES}
        self.service = protected_service(
            repository,
            work / "triton.log",
            AccountOptions(keys_file=self.keys.path),
            gateway_metrics_port=0,
        ).start(timeout=120)
        self.manifest = read_manifest(repository)

    @property
    def http(self) -> str:
        return self.service.http_url

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key[name]}"}

    def stop(self):
        self.service.stop()


@pytest.fixture(scope="module")
def deployment(tiny_repository, tmp_path_factory):
    d = Deployment(tiny_repository, tmp_path_factory.mktemp("gw_http"))
    yield d
    d.stop()


def _post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None, method="POST"):
    """(status, headers, body) of one raw HTTP request; never raises on an HTTP status."""
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _json_request(x: np.ndarray, **extra) -> bytes:
    request = {
        "inputs": [
            {"name": "IMAGE", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ],
        **extra,
    }
    return json.dumps(request).encode()


def _error(status_headers_body) -> tuple[int, str]:
    status, headers, body = status_headers_body
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    return status, json.loads(body)["error"]


def _http_infer(url, x, headers, binary=True, outputs=("PROBS", "LABEL"), model="same"):
    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("IMAGE", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs]
        # a copy: tritonclient writes Inference-Header-Content-Length into the dict it gets
        headers = dict(headers) if headers else None
        return client.infer(model, [tensor], outputs=requested or None, headers=headers)


def _grpc_infer(url, x, headers, model="same"):
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("IMAGE", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(model, [tensor], headers=headers, client_timeout=30)


def _assert_serving(deployment, name="alice"):
    x = np.zeros((1, *SHAPE), np.float32)
    result = _http_infer(deployment.http, x, deployment.bearer(name))
    assert result.as_numpy("PROBS").shape == (1, 10)


# --- the public HTTP side -------------------------------------------------------------------


@pytest.mark.server
def test_tritonclient_http_health_and_metadata(deployment):
    with httpclient.InferenceServerClient(deployment.http) as client:
        assert client.is_server_live() and client.is_server_ready()  # probes need no key
        headers = deployment.bearer("alice")
        assert client.is_model_ready("same", headers=headers)
        assert client.get_server_metadata(headers=headers)["name"] == "triton"
        metadata = client.get_model_metadata("same", headers=headers)
    assert metadata["name"] == "same"
    assert [i["name"] for i in metadata["inputs"]] == ["IMAGE"]
    assert metadata["inputs"][0]["shape"] == [-1, *SHAPE]
    # the internal output is never listed to clients (it could not be requested anyway)
    assert sorted(o["name"] for o in metadata["outputs"]) == ["LABEL", "PROBS"]
    status, _, body = _post(deployment.http, "/v2/models/same/versions/1/ready", b"", method="GET")
    assert status == 401 and b"API key" in body


@pytest.mark.server
def test_same_over_http_equals_grpc_json_and_binary(deployment):
    x = make_query_set("digits8x8", 6, SHAPE, seed=11)
    headers = deployment.bearer("alice")
    by_grpc = _grpc_infer(
        deployment.service.public_url, x, {"authorization": headers["Authorization"]}
    )
    answers = {
        "binary": _http_infer(deployment.http, x, headers, binary=True),
        "json": _http_infer(deployment.http, x, headers, binary=False),
        "all outputs": _http_infer(deployment.http, x, headers, outputs=()),
    }
    for kind, answer in answers.items():
        for name in ("PROBS", "LABEL"):
            np.testing.assert_array_equal(answer.as_numpy(name), by_grpc.as_numpy(name), kind)
    everything = answers["all outputs"].get_response()
    assert sorted(o["name"] for o in everything["outputs"]) == ["LABEL", "PROBS"]
    assert all("binary_data_size" in o["parameters"] for o in everything["outputs"])
    # a plain JSON client (curl) gets plain JSON back
    status, reply_headers, body = _post(
        deployment.http, "/v2/models/same/infer", _json_request(x[:2]), headers
    )
    assert status == 200 and reply_headers["Content-Type"].startswith("application/json")
    reply = json.loads(body)
    assert reply["model_name"] == "same"
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert sorted(outputs) == ["LABEL", "PROBS"] and outputs["PROBS"]["shape"] == [2, 10]
    np.testing.assert_array_equal(
        np.asarray(outputs["PROBS"]["data"], np.float32).reshape(2, 10),
        by_grpc.as_numpy("PROBS")[:2],
    )


@pytest.mark.server
def test_compressed_requests_are_served(deployment):
    x = make_query_set("digits8x8", 2, SHAPE, seed=11)  # seen above: no new distinct queries
    with httpclient.InferenceServerClient(deployment.http) as client:
        tensor = httpclient.InferInput("IMAGE", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        for algorithm in ("gzip", "deflate"):
            result = client.infer(
                "same",
                [tensor],
                headers=deployment.bearer("alice"),  # a fresh dict (tritonclient writes to it)
                request_compression_algorithm=algorithm,
            )
            assert result.as_numpy("LABEL").shape == (2, 1)


@pytest.mark.server
@pytest.mark.parametrize("model", ["victim", "reconstructor", "defense"])
def test_raw_models_are_refused_over_http(deployment, model):
    x = np.zeros((1, *SHAPE), np.float32)
    headers = deployment.bearer("alice")
    for binary in (True, False):
        with pytest.raises(InferenceServerException, match="not served on this endpoint") as caught:
            _http_infer(deployment.http, x, headers, binary=binary, outputs=(), model=model)
        assert caught.value.status() == "403"
    with httpclient.InferenceServerClient(deployment.http) as client:
        with pytest.raises(InferenceServerException, match="not served") as caught:
            client.get_model_metadata(model, headers=headers)
        assert caught.value.status() == "403"
        assert not client.is_model_ready(model, headers=headers)
    _assert_serving(deployment)


@pytest.mark.server
@pytest.mark.parametrize(
    "call",
    [
        lambda c, h: c.get_model_repository_index(headers=h),
        lambda c, h: c.load_model("victim", headers=h),
        lambda c, h: c.unload_model("same", headers=h),
        lambda c, h: c.get_inference_statistics(headers=h),
        lambda c, h: c.get_inference_statistics("same", headers=h),
        lambda c, h: c.get_model_config("same", headers=h),
        lambda c, h: c.get_model_config("victim", headers=h),
        lambda c, h: c.get_trace_settings(headers=h),
        lambda c, h: c.update_log_settings({"log_verbose_level": 1}, headers=h),
        lambda c, h: c.get_system_shared_memory_status(headers=h),
        lambda c, h: c.register_system_shared_memory("r", "/k", 16, headers=h),
        lambda c, h: c.unregister_cuda_shared_memory(headers=h),
    ],
)
def test_control_statistics_and_other_apis_are_refused(deployment, call):
    with httpclient.InferenceServerClient(deployment.http) as client:
        with pytest.raises(
            InferenceServerException, match="not exposed by this endpoint"
        ) as caught:
            call(client, deployment.bearer("alice"))
    assert caught.value.status() == "403"
    _assert_serving(deployment)  # still there: nothing was unloaded


def _binary_body(
    x: np.ndarray, claimed: int | None = None, extra: bytes = b"", raw: bytes | None = None
) -> tuple:
    raw = x.tobytes() if raw is None else raw
    size = len(raw) if claimed is None else claimed
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return header + raw + extra, {HEADER_LENGTH: str(len(header))}


_ONE = np.full((1, *SHAPE), 0.5, np.float32)
_NAN = _ONE.copy()
_NAN[0, 0, 3, 3] = np.nan
_BIG = np.full((257, *SHAPE), 0.5, np.float32)  # max_batch_size is 256
_PIXELS = _json_request(_ONE).replace(b"0.5", b"255.0", 1)
_BOMB = zlib.compress(bytes(MAX_MESSAGE_BYTES + 1))  # 64 KiB that inflate past the limit


BAD_REQUESTS = {
    "not JSON": (b"{'inputs': oops", {}, 400, "not valid JSON"),
    "not an object": (b"[1, 2]", {}, 400, "must be a JSON object"),
    "no inputs": (b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    "unknown datatype": (
        _json_request(_ONE).replace(b'"FP32"', b'"FLOAT"'),
        {},
        400,
        "unknown datatype 'FLOAT'",
    ),
    "shape and data disagree": (
        _json_request(_ONE).replace(b"[1, 1, 28, 28]", b"[1, 1, 28, 27]"),
        {},
        400,
        "data has 784 elements, its shape needs 756",
    ),
    "wrong shape for the model": (
        json.dumps(
            {
                "inputs": [
                    {"name": "IMAGE", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}
                ]
            }
        ).encode(),
        {},
        400,
        "unexpected shape for input 'IMAGE'",
    ),
    "wrong datatype for the model": (
        json.dumps(
            {
                "inputs": [
                    {"name": "IMAGE", "shape": [1, *SHAPE], "datatype": "INT32", "data": [0] * 784}
                ]
            }
        ).encode(),
        {},
        400,
        "data-type is 'INT32', but model 'same' expects 'FP32'",
    ),
    "strings as pixels": (
        _json_request(_ONE).replace(b"0.5", b'"0.5"', 1),
        {},
        400,
        "FP32 data must be numbers",
    ),
    "NaN": (_json_request(_NAN), {}, 400, "NaN/Inf"),
    "Infinity": (_json_request(_ONE).replace(b"0.5", b"Infinity", 1), {}, 400, "NaN/Inf"),
    "beyond FP32": (
        _json_request(_ONE).replace(b"0.5", b"1e39", 1),
        {},
        400,
        "out of range for FP32",
    ),
    "pixels 0-255": (_PIXELS, {}, 400, "outside"),
    "empty batch": (
        json.dumps(
            {"inputs": [{"name": "IMAGE", "shape": [0, *SHAPE], "datatype": "FP32", "data": []}]}
        ).encode(),
        {},
        400,
        "empty batch",
    ),
    "over max batch": (*_binary_body(_BIG), 400, "batch-size must be <= 256"),
    "binary shorter than claimed": (*_binary_body(_ONE, claimed=IMAGE_BYTES + 4), 400, "runs past"),
    "binary longer than claimed": (*_binary_body(_ONE, extra=b"\0" * 8), 400, "not claimed"),
    "byte size and shape disagree": (
        *_binary_body(_ONE, raw=bytes(IMAGE_BYTES - 4)),
        400,
        "byte size mismatch for input 'IMAGE' for model 'same'. Expected 3136, got 3132",
    ),
    "bad header length": (_json_request(_ONE), {HEADER_LENGTH: "ten"}, 400, HEADER_LENGTH),
    "internal output": (
        _json_request(_ONE, outputs=[{"name": ACCOUNT_OUTPUT}]),
        {},
        403,
        "not available to clients",
    ),
    "shared memory": (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "IMAGE",
                        "shape": [1, *SHAPE],
                        "datatype": "FP32",
                        "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8},
                    }
                ]
            }
        ).encode(),
        {},
        400,
        "shared memory is not available",
    ),
    "zip bomb": (_BOMB, {"Content-Encoding": "deflate"}, 413, "over the limit"),
    "unknown encoding": (_json_request(_ONE), {"Content-Encoding": "br"}, 415, "not supported"),
    "not gzip": (b"plain", {"Content-Encoding": "gzip"}, 400, "could not be read (gzip)"),
}


@pytest.mark.server
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_4xx_and_the_gateway_stays_up(deployment, case):
    body, headers, expected, message = BAD_REQUESTS[case]
    headers = {**deployment.bearer("mallory"), **headers}
    status, error = _error(_post(deployment.http, "/v2/models/same/infer", body, headers))
    assert status == expected, error
    assert message in error
    _assert_serving(deployment, "mallory")


@pytest.mark.server
def test_wrong_paths_methods_and_sizes(deployment):
    headers = deployment.bearer("mallory")
    assert _error(_post(deployment.http, "/v2/nothing", b"", headers, "GET"))[0] == 404
    assert _error(_post(deployment.http, "/metrics", b"", headers, "GET"))[0] == 404
    assert _error(_post(deployment.http, "/v2/models/same/infer", b"", headers, "GET"))[0] == 405
    assert _error(_post(deployment.http, "/v2/health/live", b"", {}, "POST"))[0] == 405
    # a declared size over the limit is refused before the body is read
    huge = {**headers, "Content-Length": str(MAX_MESSAGE_BYTES + 1)}
    status, error = _error(_post(deployment.http, "/v2/models/same/infer", b"{}", huge))
    assert status == 413 and "over the limit" in error
    # a percent-encoded model name is still the model it names
    status, error = _error(
        _post(deployment.http, "/v2/models/vic%74im/infer", _json_request(_ONE), headers)
    )
    assert status == 403 and "'victim'" in error
    # another model is refused as such, whatever the body
    status, error = _error(_post(deployment.http, "/v2/models/victim/infer", b"{oops", headers))
    assert status == 403 and "not served on this endpoint" in error
    _assert_serving(deployment, "mallory")


@pytest.mark.server
def test_missing_or_unknown_keys_are_401(deployment):
    body = _json_request(_ONE)
    for headers in ({}, {"Authorization": "Bearer same_nobody_0000"}, {"Authorization": ""}):
        for path, method in (
            ("/v2/models/same/infer", "POST"),
            ("/v2/models/same", "GET"),
            ("/v2", "GET"),
            ("/v2/repository/index", "POST"),
            ("/v2/anything", "GET"),
        ):
            status, error = _error(_post(deployment.http, path, body, headers, method))
            assert status == 401, (path, headers)
            assert "API key" in error
    with urllib.request.urlopen(
        f"http://127.0.0.1:{deployment.service.gateway.metrics_port}/metrics", timeout=10
    ) as page:
        metrics = page.read().decode()
    failures = [line for line in metrics.splitlines() if line.startswith("same_gateway_auth_fail")]
    assert failures and float(failures[0].split()[-1]) >= 15


@pytest.mark.server
def test_suspected_account_gets_the_policy_and_the_throttle_over_http(deployment):
    service = deployment.service
    thief = deployment.bearer("thief")
    noise = make_query_set("noise", 64, SHAPE, seed=3)
    for start in range(0, 64, 32):  # suspected after about 25 distinct queries
        _http_infer(deployment.http, noise[start : start + 32], thief)
    accounts = service.gateway.accounts
    assert accounts is not None and accounts.is_suspected("thief")
    assert not accounts.is_suspected("alice")
    x = make_query_set("digits8x8", 8, SHAPE, seed=21)
    truth = _grpc_infer(service.triton.grpc_url, x, service.triton.grpc_headers, "victim")
    labels = _http_infer(deployment.http, x, thief).as_numpy("LABEL").reshape(-1)
    # misinformation on every answer: never the victim's label
    assert (labels != truth.as_numpy("LOGITS").argmax(1)).all()
    # a second gateway that shares the account state and throttles suspected accounts
    (header,) = service.triton.grpc_headers.items()
    throttled = GatewayServer(
        f"127.0.0.1:{free_port()}",
        service.triton.grpc_url,
        GatewayPolicy(upstream_header=header),
        auth=Authenticator(keys=deployment.keys),
        accounts=accounts,
        throttle=Throttle(rate=0.01),
        http_listen="127.0.0.1:0",
    ).start()
    try:
        url = f"127.0.0.1:{throttled.http_port}"
        assert _http_infer(url, x[:1], thief).as_numpy("LABEL").shape == (1, 1)
        status, headers, body = _post(url, "/v2/models/same/infer", _json_request(x[:1]), thief)
        assert status == 429 and headers["Retry-After"] == "100"
        assert "limited to 0.01 requests/s" in json.loads(body)["error"]
        alice = _http_infer(url, x[:1], deployment.bearer("alice"))  # others are not throttled
        assert alice.as_numpy("LABEL").shape == (1, 1)
    finally:
        throttled.stop()
    with urllib.request.urlopen(
        f"http://127.0.0.1:{service.gateway.metrics_port}/metrics", timeout=10
    ) as page:
        assert 'same_gateway_requests_total{account_state="suspected"}' in page.read().decode()


@pytest.mark.server
def test_anonymous_mode_one_account_per_address_on_both_protocols(deployment):
    service = deployment.service
    (header,) = service.triton.grpc_headers.items()
    options = AccountOptions(None, anonymous=True)
    gateway = GatewayServer(
        f"127.0.0.1:{free_port()}",
        service.triton.grpc_url,
        GatewayPolicy(upstream_header=header),
        auth=options.authenticator(),
        accounts=options.service(deployment.manifest),
        http_listen="127.0.0.1:0",
    ).start()
    try:
        x = make_query_set("digits8x8", 2, SHAPE, seed=31)
        assert _http_infer(f"127.0.0.1:{gateway.http_port}", x, None).as_numpy("LABEL").shape
        assert _grpc_infer(f"127.0.0.1:{gateway.port}", x, None).as_numpy("LABEL").shape
        (account, state), *others = gateway.accounts.store.accounts()
    finally:
        gateway.stop()
    assert account == "peer:127.0.0.1" and not others
    assert state.queries == 4 and state.distinct == 2  # the same images over both: repeats


def test_triton_down_is_503_and_the_gateway_stays_up():
    gateway = GatewayServer(
        "127.0.0.1:0",
        f"127.0.0.1:{free_port()}",  # nothing listens there
        auth=Authenticator(anonymous=True),
        http_listen="127.0.0.1:0",
    ).start()
    try:
        url = f"127.0.0.1:{gateway.http_port}"
        for _ in range(2):
            status, error = _error(_post(url, "/v2/models/same/infer", _json_request(_ONE)))
            assert status == 503 and "unavailable behind the gateway" in error
        assert _error(_post(url, "/v2/health/ready", b"", method="GET"))[0] == 503
    finally:
        gateway.stop()


# --- every port of the default deployment ---------------------------------------------------


def _victim_over_grpc(host: str, port: int, headers) -> bool:
    """True when the port answers `victim` over gRPC."""
    try:
        _grpc_infer(f"{host}:{port}", _ONE, headers, model="victim")
    except InferenceServerException:
        return False
    return True


def _victim_over_http(host: str, port: int, headers) -> bool:
    """True when the port answers `victim` over HTTP (JSON or binary)."""
    for body, extra in ((_json_request(_ONE), {}), _binary_body(_ONE)):
        try:
            status, _, reply = _post(
                f"{host}:{port}", "/v2/models/victim/infer", body, {**headers, **extra}
            )
        except (OSError, http.client.HTTPException):  # not an HTTP/1.1 server
            continue
        if b"LOGITS" in reply:  # the victim's output, JSON or binary (a 200 alone could be
            return True  # a metrics page)
    return False


@pytest.mark.server
def test_no_port_of_the_default_deployment_answers_victim(deployment):
    service = deployment.service
    triton = psutil.Process(service.triton.process.pid)
    triton_ports = {
        c.laddr.port for c in triton.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
    }
    # Triton opens gRPC and metrics only, on loopback: its HTTP is closed
    assert triton_ports == {service.triton.grpc_port, service.triton.metrics_port}
    listening = {
        c.laddr.ip for c in triton.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
    }
    assert listening <= {"127.0.0.1", "::ffff:127.0.0.1"}  # IPv4 loopback, maybe v6-mapped
    gateway = service.gateway
    ports = triton_ports | {gateway.port, gateway.http_port, gateway.metrics_port}
    assert len(ports) == 5
    grpc_key = {"authorization": f"Bearer {deployment.key['alice']}"}
    for port in sorted(ports):
        for headers in (grpc_key, {}):
            assert not _victim_over_grpc("127.0.0.1", port, headers), port
        for headers in (deployment.bearer("alice"), {}):
            assert not _victim_over_http("127.0.0.1", port, headers), port
    # the refusals are the locks, not a broken victim: with Triton's key it answers
    assert _victim_over_grpc("127.0.0.1", service.triton.grpc_port, service.triton.grpc_headers)


@pytest.mark.server
def test_triton_http_when_opened_is_locked_with_the_key(tiny_repository, tmp_path):
    service = ProtectedService(
        tiny_repository,
        public_port=free_port(),
        http_port=None,
        metrics_port=free_port(),
        triton_http_port=free_port(),
        log_file=tmp_path / "triton.log",
        workdir=PROJECT_ROOT / ".triton",
        accounts=AccountOptions(None, anonymous=True),
    ).start(timeout=120)
    try:
        host, port = service.triton.http_url.rsplit(":", 1)
        assert service.http_url is None and service.gateway.http_port is None
        assert not _victim_over_http(host, int(port), {})
        status, _, body = _post(
            service.triton.http_url, "/v2/models/victim/infer", _json_request(_ONE)
        )
        assert status == 403 and b"This API is restricted" in body
        with httpclient.InferenceServerClient(service.triton.http_url) as client:
            assert client.is_server_live()  # health stays open for probes
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_model_repository_index()
        assert _victim_over_http(host, int(port), service.triton.http_headers)
    finally:
        service.stop()


# --- translation (no server) ----------------------------------------------------------------


def test_routes():
    assert route(["v2"]).method == "ServerMetadata"
    assert route(["v2", "health", "ready"]).method == "ServerReady"
    r = route(["v2", "models", "same", "versions", "3", "infer"])
    assert (r.method, r.model, r.version, r.allowed) == ("ModelInfer", "same", "3", ("POST",))
    assert route(["v2", "models", "same", "ready"]).method == "ModelReady"
    assert route(["v2", "models", "same"]).method == "ModelMetadata"
    for path in (
        "repository/index",
        "repository/models/victim/load",
        "models/stats",
        "models/same/stats",
        "models/same/config",
        "models/same/versions/1/config",
        "trace/setting",
        "logging",
        "systemsharedmemory/status",
        "cudasharedmemory/region/r/register",
    ):
        assert route(["v2", *path.split("/")]).refused, path
    for path in ("", "v1/models/same/infer", "v2/models", "v2/models/same/explain", "v2/x"):
        assert route(path.split("/")) is None, path


def test_json_tensors_become_the_raw_bytes_a_grpc_client_sends():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 8
    body = json.dumps(
        {
            "id": "r1",
            "parameters": {"priority": 2, "binary_data_output": True, "tag": "t"},
            "inputs": [
                {"name": "A", "shape": [1, 2, 3], "datatype": "FP32", "data": x.tolist()},
                {"name": "B", "shape": [3], "datatype": "INT8", "data": [-128, 0, 127]},
                {"name": "C", "shape": [2], "datatype": "BYTES", "data": ["é", ""]},
                {"name": "D", "shape": [2], "datatype": "BOOL", "data": [True, False]},
                {
                    "name": "E",
                    "shape": [2],
                    "datatype": "UINT16",
                    "parameters": {"binary_data_size": 4},
                },
            ],
            "outputs": [{"name": "P", "parameters": {"binary_data": False, "classification": 2}}],
        }
    ).encode()
    tail = np.array([1, 65535], np.uint16).tobytes()
    message, plan = infer_request("same", "1", body + tail, str(len(body)))
    assert (message.model_name, message.model_version, message.id) == ("same", "1", "r1")
    assert message.parameters["priority"].int64_param == 2
    assert message.parameters["tag"].string_param == "t"
    assert "binary_data_output" not in message.parameters
    raw = message.raw_input_contents
    np.testing.assert_array_equal(np.frombuffer(raw[0], np.float32).reshape(1, 2, 3), x)
    assert np.frombuffer(raw[1], np.int8).tolist() == [-128, 0, 127]
    assert raw[2] == b"\x02\x00\x00\x00\xc3\xa9" + b"\x00\x00\x00\x00"
    assert np.frombuffer(raw[3], np.bool_).tolist() == [True, False]
    assert raw[4] == tail
    assert [list(t.shape) for t in message.inputs] == [[1, 2, 3], [3], [2], [2], [2]]
    assert message.outputs[0].parameters["classification"].int64_param == 2
    assert plan.default_binary and not plan.is_binary("P", "FP32") and plan.is_binary("Q", "FP32")


@pytest.mark.parametrize(
    "tensor, message",
    [
        ({"datatype": "INT8", "data": [128, 0, 0]}, "out of range for INT8"),
        ({"datatype": "UINT8", "data": [-1, 0, 0]}, "out of range for UINT8"),
        ({"datatype": "INT32", "data": [1.5, 0, 0]}, "must be integers"),
        ({"datatype": "BOOL", "data": [1, 0, 1]}, "must be true/false"),
        ({"datatype": "FP16", "data": [1e5, 0, 0]}, "out of range for FP16"),
        ({"datatype": "FP64", "data": [10**400, 0, 0]}, "out of range for FP64"),
        ({"datatype": "FP32", "data": [None, 0, 0]}, "must be numbers"),
        ({"datatype": "FP32", "data": [[0, 0], [0, 0]]}, "data has 4 elements"),
        ({"datatype": "FP32", "data": [0, 0]}, "data has 2 elements, its shape needs 3"),
        ({"datatype": "BF16", "data": [0, 0, 0]}, "binary"),
        ({"datatype": "FP32", "data": [0, 0, 0], "shape": [3.0]}, "non-negative integers"),
        ({"datatype": "FP32", "data": [0, 0, 0], "shape": [-3]}, "non-negative integers"),
        ({"datatype": "FP32"}, "neither 'data' nor 'binary_data_size'"),
        ({"datatype": "FP32", "data": [0] * 3, "parameters": {"binary_data_size": 12}}, "not both"),
        ({"datatype": "FP32", "data": [0] * 3, "parameters": {"p": [1]}}, "bool, number or string"),
    ],
)
def test_malformed_json_tensors_are_400(tensor, message):
    spec = {"name": "X", "shape": [3], **tensor}
    body = json.dumps({"inputs": [spec]}).encode()
    with pytest.raises(RestError, match=message) as caught:
        infer_request("same", "", body, None)
    assert caught.value.status == 400


def test_deep_nesting_is_400_not_a_crash():
    body = b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": ' + b"[" * 100_000
    with pytest.raises(RestError) as caught:
        infer_request("same", "", body, None)
    assert caught.value.status == 400
    nested = json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": 0}]})
    deep = nested.replace('"data": 0', '"data": ' + "[" * 80 + "0" + "]" * 80).encode()
    with pytest.raises(RestError, match="nested deeper"):
        infer_request("same", "", deep, None)


def test_answers_render_as_json_or_binary():
    response = service_pb2.ModelInferResponse(model_name="same", model_version="1", id="r1")
    response.parameters["sequence_id"].int64_param = 0
    probs = np.array([[0.25, 0.75]], np.float32)
    labels = np.array([[1]], np.int64)
    response.outputs.add(name="PROBS", datatype="FP32", shape=[1, 2])
    response.outputs.add(name="LABEL", datatype="INT64", shape=[1, 1])
    response.outputs.add(name="TEXT", datatype="BYTES", shape=[1])
    response.raw_output_contents.extend([probs.tobytes(), labels.tobytes(), b"\x03\x00\x00\x00abc"])
    body, headers = infer_response(response.SerializeToString(), OutputPlan())
    assert headers == {"Content-Type": "application/json"}
    reply = json.loads(body)
    assert reply["id"] == "r1" and reply["parameters"] == {"sequence_id": 0}
    assert [o["data"] for o in reply["outputs"]] == [[0.25, 0.75], [1], ["abc"]]
    body, headers = infer_response(
        response.SerializeToString(), OutputPlan(default_binary=True, binary={"TEXT": False})
    )
    length = int(headers[HEADER_LENGTH])
    reply = json.loads(body[:length])
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in reply["outputs"]]
    assert sizes == [8, 8, None] and reply["outputs"][2]["data"] == ["abc"]
    assert body[length:] == probs.tobytes() + labels.tobytes()
    # typed contents (not raw) render the same
    typed = service_pb2.ModelInferResponse(model_name="same")
    typed.outputs.add(name="PROBS", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend(
        [0.25, 0.75]
    )
    assert json.loads(infer_response(typed.SerializeToString(), OutputPlan())[0])["outputs"][0][
        "data"
    ] == [0.25, 0.75]


def test_the_default_deployment_closes_tritons_http(tmp_path):
    service = ProtectedService(tmp_path, workdir=PROJECT_ROOT / ".triton")
    key = ("same-gateway-key", "s3cret")
    closed = service.upstream(key).command()
    assert "--allow-http=false" in closed
    assert not any(a.startswith(("--http-port", "--http-restricted-api")) for a in closed)
    assert any(
        a.startswith("--grpc-restricted-protocol=") and a.endswith(":same-gateway-key=s3cret")
        for a in closed
    )
    service.triton_http_port = 8123
    opened = service.upstream(key).command()
    assert "--http-port=8123" in opened and "--http-address=127.0.0.1" in opened
    locked = [a for a in opened if a.startswith("--http-restricted-api=")]
    assert locked and locked[0].endswith(":same-gateway-key=s3cret") and "inference" in locked[0]


def test_grpc_side_still_refuses_unknown_services_after_the_refactor():
    gateway = GatewayServer(
        "127.0.0.1:0", f"127.0.0.1:{free_port()}", auth=Authenticator(anonymous=True)
    ).start()
    try:
        assert gateway.http_port is None
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/RepositoryIndex",
                request_serializer=service_pb2.RepositoryIndexRequest.SerializeToString,
            )
            with pytest.raises(grpc.RpcError) as caught:
                call(service_pb2.RepositoryIndexRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        gateway.stop()
