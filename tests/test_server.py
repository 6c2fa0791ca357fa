"""Integration: a real tritonserver (embedded, from nvidia-pytriton) serving the ensemble."""

from __future__ import annotations

import shutil
import time
import urllib.request

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from same_harness.data.queries import make_query_set
from tritonclient.utils import InferenceServerException

from same_defense.client import SameClient, SameClientError
from same_defense.client.cli import main as client_cli
from same_defense.core import METRICS_FLUSH_S
from same_defense.ports import free_port
from same_defense.runtime.inprocess import InProcessSame
from same_defense.serving.embedded import ServerError
from same_defense.serving.metrics import read_defense_counters

from .servers import start_server

pytestmark = pytest.mark.server
SHAPE = (1, 28, 28)


def _digits(n: int, seed: int = 0) -> np.ndarray:
    return make_query_set("digits8x8", n, SHAPE, seed)


def _raw_infer(server, array: np.ndarray, datatype: str = "FP32", model: str = "same"):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("IMAGE", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return client.infer(model, [tensor])


def _assert_still_serving(server):
    with SameClient(server.grpc_url) as client:
        assert client.classify(_digits(2)).probs.shape == (2, 10)


def test_classify_returns_probabilities_and_labels(server):
    with SameClient(server.grpc_url) as client:
        prediction = client.classify(_digits(40))
    assert prediction.probs.shape == (40, 10) and prediction.labels.shape == (40,)
    np.testing.assert_allclose(prediction.probs.sum(axis=1), 1.0, rtol=1e-5)


def test_score_and_flag_never_leave_triton_only_the_internal_pvalue(server, tiny_repository):
    # Triton itself (internal; behind the gateway, which strips it: see
    # test_account_gateway.py) returns the answer and the account test's evidence per query:
    # the class-conditional rank of the score, the predicted class and the flag's bit, never
    # the score itself.
    x = _digits(3)
    result = _raw_infer(server, x)
    names = {o.name for o in result.get_response().outputs}
    assert names == {"PROBS", "LABEL", "ACCOUNT_PVALUE"}
    expected = InProcessSame(tiny_repository).infer(x).evidence()
    np.testing.assert_allclose(result.as_numpy("ACCOUNT_PVALUE"), expected, rtol=1e-6)


def test_server_answers_equal_the_in_process_pipeline(server, tiny_repository):
    x = np.concatenate([_digits(30), make_query_set("noise", 30, SHAPE, seed=4)])
    with SameClient(server.grpc_url) as client:
        served = client.classify(x, batch_size=16)
    local = InProcessSame(tiny_repository).infer(x)
    np.testing.assert_allclose(served.probs, local.probs, atol=1e-5)
    np.testing.assert_array_equal(served.labels, local.labels)
    assert local.flagged[30:].mean() > local.flagged[:30].mean()  # noise is the odd one out


def _score_histogram(metrics_url: str) -> dict[str, float]:
    """``same_score_count`` and the +Inf and threshold (le="1"-times) buckets, summed."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("same_score_count") or 'le="+Inf"' in line:
            key = "count" if line.startswith("same_score_count") else "inf"
            found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def _flush_histogram(client: SameClient) -> None:
    """One request after the flush period: the step sends every score it has added up."""
    time.sleep(METRICS_FLUSH_S + 0.1)
    client.classify(make_query_set("noise", 1, SHAPE, seed=10))


def test_metrics_count_scored_and_flagged_queries(server):
    with SameClient(server.grpc_url) as client:
        _flush_histogram(client)  # earlier tests' scores out of the way
        before = read_defense_counters(server.metrics_url)
        histogram_before = _score_histogram(server.metrics_url)
        client.classify(make_query_set("noise", 50, SHAPE, seed=9), batch_size=1)
        delta = read_defense_counters(server.metrics_url) - before
        assert delta.scored == 50  # sent with every answer: exact at once
        assert delta.flagged >= 40  # noise is far from handwritten digits, even for a tiny MAE
        # The histogram is sent at most every METRICS_FLUSH_S, from within an execute: the
        # first request after that period carries everything before it.
        _flush_histogram(client)
    histogram = _score_histogram(server.metrics_url)
    assert histogram["count"] - histogram_before.get("count", 0.0) == 51
    assert histogram["inf"] - histogram_before.get("inf", 0.0) == 51


@pytest.mark.parametrize(
    "case, expected",
    [
        ("nan", "NaN/Inf"),
        ("inf", "NaN/Inf"),
        ("range", r"outside \[0.0, 1.0\] \(scale pixels by 1/255\?\)"),
        ("negative", r"sample 3: pixel values in \[-0.5"),
        ("shape", "unexpected shape"),
        ("dtype", "data-type is 'FP64', but model 'same' expects 'FP32'"),
        ("oversized", "batch-size must be <= 256"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(server, case, expected):
    x = _digits(4)
    datatype = "FP32"
    if case == "nan":
        x[2, 0, 5, 5] = np.nan
    elif case == "inf":
        x[1, 0, 0, 0] = -np.inf
    elif case == "range":
        x = x * 255
    elif case == "negative":
        x[3] -= 0.5
    elif case == "shape":
        x = np.zeros((2, 1, 32, 32), np.float32)
    elif case == "dtype":
        x, datatype = x.astype(np.float64), "FP64"
    elif case == "oversized":
        x = np.zeros((257, *SHAPE), np.float32)
    with pytest.raises(InferenceServerException, match=expected) as caught:
        _raw_infer(server, x, datatype)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    _assert_still_serving(server)


def test_invalid_sample_is_named_in_the_error(server):
    x = _digits(5)
    x[3, 0, 1, 1] = np.nan
    with pytest.raises(InferenceServerException, match="sample 3"):
        _raw_infer(server, x)


def test_client_reports_health(server):
    with SameClient(server.grpc_url) as client:
        report = client.health()
    assert report["live"] and report["ready"]
    assert {"same", "victim", "reconstructor", "defense"} <= set(report["models"])
    assert report["models"]["same"]["state"] == "READY"


def test_client_errors_are_clear_for_down_server_and_missing_model(server):
    with SameClient(f"127.0.0.1:{free_port()}") as client:
        with pytest.raises(SameClientError, match="cannot reach Triton"):
            client.classify(_digits(1))
    with SameClient(server.grpc_url, model="no_such_model") as client:
        with pytest.raises(SameClientError, match="not available"):
            client.classify(_digits(1))
    with SameClient(server.grpc_url) as client:
        with pytest.raises(SameClientError, match="per sample"):
            client.classify(np.zeros((1, 3, 28, 28), np.float32))


def test_command_line_classifies_files_and_reports_health(server, tmp_path, capsys):
    npy = tmp_path / "batch.npy"
    np.save(npy, _digits(3))
    png = tmp_path / "digit.png"
    Image.fromarray(np.uint8(_digits(1)[0, 0] * 255)).save(png)
    assert client_cli(["--url", server.grpc_url, "classify", str(npy), str(png)]) == 0
    out = capsys.readouterr().out
    assert out.count("label=") == 4
    assert client_cli(["--url", server.grpc_url, "health"]) == 0
    assert "same: READY" in capsys.readouterr().out
    assert client_cli(["--url", f"127.0.0.1:{free_port()}", "health"]) == 2
    assert "cannot reach Triton" in capsys.readouterr().err
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not numpy")
    assert client_cli(["--url", server.grpc_url, "classify", str(broken)]) == 2


def test_stop_leaves_no_stub_processes(tiny_repository, tmp_path):
    srv = start_server(tiny_repository, tmp_path / "triton.log")
    children = psutil.Process(srv.process.pid).children(recursive=True)
    assert any("triton_python_backend_stub" in " ".join(c.cmdline()) for c in children)
    srv.stop()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.pid for p in alive]


def test_tampered_onnx_stops_the_ensemble_from_loading(tiny_repository, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(tiny_repository, copy)
    onnx_file = copy / "reconstructor" / "1" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last initializer byte: still loads, different model
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ServerError, match="does not match its calibration"):
        start_server(copy, tmp_path / "triton.log")


def _http_infer(server, array: np.ndarray, datatype: str = "FP32"):
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("IMAGE", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return client.infer("same", [tensor])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("nan", "NaN/Inf"),
        ("range", r"outside \[0.0, 1.0\]"),
        ("dtype", "data-type is 'FP64'"),
        ("channels", "unexpected shape"),
        ("empty", "byte size mismatch"),
    ],
)
def test_bad_input_over_http_gets_a_400(server, case, expected):
    x, datatype = _digits(3), "FP32"
    if case == "nan":
        x[0, 0, 3, 3] = np.nan
    elif case == "range":
        x[2] += 2.0
    elif case == "dtype":
        x, datatype = x.astype(np.float64), "FP64"
    elif case == "channels":
        x = np.zeros((1, 3, 28, 28), np.float32)
    elif case == "empty":
        x = np.zeros((0, *SHAPE), np.float32)
    with pytest.raises(InferenceServerException, match=expected) as caught:
        _http_infer(server, x, datatype)
    assert caught.value.status() == "400"
    assert _http_infer(server, _digits(2)).as_numpy("PROBS").shape == (2, 10)


def test_edge_values_that_are_valid_are_served(server):
    x = _digits(3)
    x[0, 0, 0, :4] = np.float32(1e-45)  # subnormal floats are valid pixels
    x[1] = 0.0
    x[2] = 1.0
    assert _raw_infer(server, x).as_numpy("PROBS").shape == (3, 10)


def test_huge_values_are_refused(server):
    x = _digits(2)
    x[1, 0, 0, 0] = np.float32(3e38)
    with pytest.raises(InferenceServerException, match="sample 1: pixel values"):
        _raw_infer(server, x)


def test_unknown_output_name_is_refused(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("IMAGE", [1, *SHAPE], "FP32")
        tensor.set_data_from_numpy(_digits(1))
        outputs = [grpcclient.InferRequestedOutput("SCORE")]
        with pytest.raises(InferenceServerException, match="unexpected inference output 'SCORE'"):
            client.infer("same", [tensor], outputs=outputs)
    _assert_still_serving(server)


def test_raw_request_with_wrong_byte_size_is_refused(server):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="same")
    tensor = request.inputs.add(name="IMAGE", datatype="FP32", shape=[2, *SHAPE])
    assert tensor.name == "IMAGE"
    request.raw_input_contents.append(_digits(2).tobytes()[:-4])
    with grpc.insecure_channel(server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "byte size mismatch" in caught.value.details()
    _assert_still_serving(server)
