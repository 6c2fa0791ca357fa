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


def test_only_accounts_under_suspicion_queue_in_the_lane():
    """With the lane full, a suspected account's request is refused, an honest one passes."""
    import grpc
    import pytest

    from same_defense.gateway.accounting import Authenticator, SuspectLane
    from same_defense.gateway.metrics import GatewayMetrics
    from same_defense.gateway.rules import Caller, GatewayCore, GatewayError

    class Accounts:  # the account layer's contract: serve(account, answer, links)
        def serve(self, account, answer, links):
            tier = "suspected" if account.startswith("peer:10.") else ""
            return answer(tier)[0], tier

    class Channel:
        def unary_unary(self, method):
            return lambda request, **kwargs: service_pb2.ModelInferResponse().SerializeToString()

    lane = SuspectLane(in_flight=1, waiting=0)
    core = GatewayCore(
        Channel(),
        GatewayPolicy(),
        Authenticator(anonymous=True),
        Accounts(),
        GatewayMetrics(),
        lane=lane,
    )
    request = _infer("same")
    honest, thief = Caller((), "ipv4:127.0.0.1:1"), Caller((), "ipv4:10.0.0.9:1")
    assert core.call("ModelInfer", request, thief) is not None  # the lane is free
    with lane.slot():  # another suspected request is at Triton
        assert core.call("ModelInfer", request, honest) is not None
        with pytest.raises(GatewayError) as refused:
            core.call("ModelInfer", request, thief)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
