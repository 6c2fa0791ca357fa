"""Faults: a crashed backend process, a server restart under a client, broken model files,
and bad input sent while other clients' good traffic flows."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from same_harness.data.queries import make_query_set
from tritonclient.utils import InferenceServerException

from same_defense.client import SameClient, SameClientError
from same_defense.ports import free_port
from same_defense.serving.embedded import EmbeddedTriton, ServerError
from same_defense.serving.supervisor import stubs_by_model

from .servers import PROJECT_ROOT, start_server

pytestmark = pytest.mark.server
SHAPE = (1, 28, 28)


def _images(n: int = 4) -> np.ndarray:
    return make_query_set("digits8x8", n, SHAPE, seed=5)


@pytest.fixture
def own_server(tiny_repository, tmp_path):
    srv = start_server(tiny_repository, tmp_path / "triton.log")
    yield srv
    srv.stop()


@pytest.mark.parametrize("model", ["defense", "victim"])
def test_killed_stub_fails_clearly_then_recovers_without_an_operator(own_server, model, tmp_path):
    pid = sorted(stubs_by_model(own_server.process.pid, own_server.repository)[model])[0]
    with SameClient(own_server.grpc_url, retries=0) as impatient:
        impatient.classify(_images())
        psutil.Process(pid).kill()
        with pytest.raises(SameClientError, match="not healthy"):
            impatient.classify(_images())  # fails fast (about 1 s) with the reason
    with SameClient(own_server.grpc_url, retries=5, backoff_s=0.5) as patient:
        assert patient.classify(_images()).labels.shape == (4,)  # retried until restarted
    assert [m for _, m in own_server.supervisor.restarts] == [model]
    assert pid not in stubs_by_model(own_server.process.pid, own_server.repository)[model]


def test_server_restart_under_a_client(tiny_repository, tmp_path):
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}

    def make() -> EmbeddedTriton:
        return EmbeddedTriton(
            tiny_repository,
            log_file=tmp_path / "triton.log",
            workdir=PROJECT_ROOT / ".triton",
            **ports,
        )

    first = make().start(120)
    client = SameClient(first.grpc_url, retries=0)
    client.classify(_images())
    first.stop()
    started = time.monotonic()
    with pytest.raises(SameClientError, match="cannot reach Triton"):
        client.classify(_images())
    assert time.monotonic() - started < 5  # fails fast, no hang
    second = make()
    restarter = threading.Thread(target=second.start, args=(120,))
    restarter.start()
    try:
        client.retries, client.backoff_s = 8, 0.5  # 0.5 + 1 + ... : up to about 2 minutes
        assert client.classify(_images()).labels.shape == (4,)  # same client object
        assert client.retried > 0
    finally:
        restarter.join()
        second.stop()
        client.close()


def test_missing_onnx_file_stops_loading_with_the_reason(tiny_repository, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(tiny_repository, copy)
    (copy / "victim" / "1" / "model.onnx").unlink()
    with pytest.raises(ServerError, match="victim/1/model.onnx is missing"):
        start_server(copy, tmp_path / "triton.log")


def test_bad_input_does_not_disturb_other_clients(own_server):
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def good_traffic() -> None:
        nonlocal served
        with SameClient(own_server.grpc_url, retries=0) as client:
            while not stop.is_set():
                try:
                    client.classify(_images(8))
                    served += 1
                except SameClientError as exc:
                    failures.append(str(exc))

    worker = threading.Thread(target=good_traffic)
    worker.start()
    bad_inputs = [np.full((3, *SHAPE), np.nan, np.float32), np.full((3, *SHAPE), 7.0, np.float32)]
    try:
        with grpcclient.InferenceServerClient(own_server.grpc_url) as attacker:
            for i in range(20):
                x = bad_inputs[i % 2]
                tensor = grpcclient.InferInput("IMAGE", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                with pytest.raises(InferenceServerException):
                    attacker.infer("same", [tensor])
    finally:
        stop.set()
        worker.join()
    assert not failures and served > 0
