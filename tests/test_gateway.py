"""The default deployment from the public side: only `same` (and health/metadata) answers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from same_harness.data.queries import make_query_set
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from same_defense.accounts import KeyStore
from same_defense.client import SameClient, SameClientError
from same_defense.gateway.options import AccountOptions

from .servers import protected_service

pytestmark = pytest.mark.server
SHAPE = (1, 28, 28)


KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def protected(tiny_repository, tmp_path_factory):
    work = tmp_path_factory.mktemp("gw")
    keys = work / "keys.json"
    KEY["authorization"] = "Bearer " + KeyStore(keys).add("tester")
    service = protected_service(
        tiny_repository,
        work / "triton.log",
        AccountOptions(keys_file=keys),
    ).start(timeout=120)
    with pytest.MonkeyPatch.context() as env:  # SameClient reads its key from here
        env.setenv("SAME_API_KEY", KEY["authorization"].split()[1])
        yield service
    service.stop()


def _infer(url: str, model: str, x: np.ndarray, headers=KEY):
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("IMAGE", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(model, [tensor], headers=headers)


def test_same_is_served_through_the_gateway(protected):
    x = make_query_set("digits8x8", 5, SHAPE, seed=2)
    with SameClient(protected.public_url) as client:
        prediction = client.classify(x)
        assert client.health()["models"]["same"]["state"] == "READY"
    assert prediction.probs.shape == (5, 10)


@pytest.mark.parametrize("model", ["victim", "reconstructor", "defense"])
def test_raw_models_are_refused_from_the_public_side(protected, model):
    with pytest.raises(InferenceServerException, match="not served on this endpoint") as caught:
        _infer(protected.public_url, model, np.zeros((1, *SHAPE), np.float32))
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    with SameClient(protected.public_url, model=model, retries=0) as client:
        with pytest.raises(SameClientError, match="not served"):
            client.classify(np.zeros((1, *SHAPE), np.float32))


@pytest.mark.parametrize(
    "call",
    [
        lambda c, h: c.get_model_repository_index(headers=h),
        lambda c, h: c.unload_model("same", headers=h),
        lambda c, h: c.load_model("victim", headers=h),
        lambda c, h: c.get_inference_statistics(headers=h),
        lambda c, h: c.register_system_shared_memory("r", "/k", 16, headers=h),
        lambda c, h: c.get_model_metadata("victim", headers=h),
        lambda c, h: c.get_model_config("reconstructor", headers=h),
    ],
)
def test_control_and_other_models_metadata_are_refused(protected, call):
    with grpcclient.InferenceServerClient(protected.public_url) as client:
        with pytest.raises(InferenceServerException) as caught:
            call(client, KEY)
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    with SameClient(protected.public_url) as client:  # and `same` still answers
        assert client.classify(np.zeros((1, *SHAPE), np.float32)).labels.shape == (1,)


def test_triton_behind_the_gateway_demands_the_key(protected):
    internal = protected.triton.grpc_url
    with pytest.raises(InferenceServerException, match="restricted"):
        _infer(internal, "victim", np.zeros((1, *SHAPE), np.float32))
    result = _infer(
        internal, "same", np.zeros((1, *SHAPE), np.float32), protected.triton.grpc_headers
    )
    assert result.as_numpy("PROBS").shape == (1, 10)


def test_errors_pass_through_with_their_status(protected):
    x = np.zeros((2, *SHAPE), np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(InferenceServerException, match="sample 1: 1 NaN/Inf") as caught:
        _infer(protected.public_url, "same", x)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="empty batch") as caught:
        _infer(protected.public_url, "same", np.zeros((0, *SHAPE), np.float32))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_unknown_services_are_unimplemented(protected):
    with grpc.insecure_channel(protected.public_url) as channel:
        call = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=service_pb2.ServerLiveRequest.SerializeToString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(service_pb2.ServerLiveRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
