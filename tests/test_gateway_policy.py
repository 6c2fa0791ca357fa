"""The gateway's decision, as a pure function of method and request bytes."""

from tritonclient.grpc import service_pb2

from same_defense.gateway.rules import GatewayPolicy


def _infer(model: str, batch: int = 1) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="IMAGE", datatype="FP32", shape=[batch, 1, 28, 28])
    return request.SerializeToString()


def test_only_public_models_pass():
    policy = GatewayPolicy()
    assert policy.check("ModelInfer", _infer("same")) is None
    assert "not served" in policy.check("ModelInfer", _infer("victim"))
    ready = service_pb2.ModelReadyRequest(name="reconstructor").SerializeToString()
    assert "not served" in policy.check("ModelReady", ready)
    assert policy.check("ServerLive", b"") is None


def test_control_and_unknown_methods_are_refused():
    policy = GatewayPolicy()
    for method in ("RepositoryModelUnload", "SystemSharedMemoryRegister", "ModelStreamInfer"):
        assert "not exposed" in policy.check(method, b"")


def test_malformed_request_is_refused_not_forwarded():
    assert "malformed" in GatewayPolicy().check("ModelInfer", b"\xff\xff\xff")


def test_empty_batch_is_named():
    assert "empty batch" in GatewayPolicy().check_infer_request(_infer("same", batch=0))
    assert GatewayPolicy().check_infer_request(_infer("same", batch=2)) is None
