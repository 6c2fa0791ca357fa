"""The account layer served for real: keys, the internal output, and state shared in Redis.

One tritonserver (tiny repository), one redis-server, and three gateways in front: A and B
share the Redis state (fail closed), C shares it too but fails open, D is anonymous, E also
throttles suspected accounts.
"""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from same_harness.data.queries import make_query_set
from tritonclient.utils import InferenceServerException

from same_defense.accounts import KeyStore
from same_defense.accounts.local_redis import LocalRedis
from same_defense.client import SameClient, SameClientError
from same_defense.core.accounts import ACCOUNT_OUTPUT_WIDTH
from same_defense.core.layout import ACCOUNT_OUTPUT, ACCOUNT_PARAMETER
from same_defense.core.manifest import read_manifest
from same_defense.data import load_dataset, split_dataset
from same_defense.gateway.options import AccountOptions
from same_defense.gateway.proxy import GatewayServer
from same_defense.gateway.rules import GatewayPolicy
from same_defense.ports import free_port
from same_defense.runtime.inprocess import InProcessSame

from .servers import protected_service

pytestmark = [pytest.mark.server, pytest.mark.redis]
SHAPE = (1, 28, 28)


class Deployment:
    def __init__(self, repository, work):
        self.redis = LocalRedis(work / "redis").start()
        self.keys = KeyStore(work / "keys.json")
        self.key = {name: self.keys.add(name) for name in ("alice", "thief", "mallory", "sybil")}
        shared = AccountOptions(keys_file=self.keys.path, redis_url=self.redis.url)
        self.service = protected_service(
            repository,
            work / "triton.log",
            shared,
            gateway_metrics_port=0,
        ).start(timeout=120)
        manifest = read_manifest(repository)
        (header,) = self.service.triton.grpc_headers.items()
        self.extra = {}
        for name, options in {
            "B": shared,
            "C": AccountOptions(self.keys.path, redis_url=self.redis.url, on_store_error="open"),
            "D": AccountOptions(None, anonymous=True),
            "E": AccountOptions(self.keys.path, redis_url=self.redis.url, suspected_rate=0.2),
        }.items():
            self.extra[name] = GatewayServer(
                f"127.0.0.1:{free_port()}",
                self.service.triton.grpc_url,
                GatewayPolicy(upstream_header=header),
                auth=options.authenticator(),
                accounts=options.service(manifest),
                throttle=options.throttle(),
            ).start()

    def url(self, name: str) -> str:
        if name == "A":
            return self.service.public_url
        return f"127.0.0.1:{self.extra[name].port}"

    def stop(self):
        for gateway in self.extra.values():
            gateway.stop()
        self.service.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def deployment(tiny_repository, tmp_path_factory):
    d = Deployment(tiny_repository, tmp_path_factory.mktemp("accounts"))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def digits(tiny_repository):
    manifest = InProcessSame(tiny_repository).manifest
    test = split_dataset(load_dataset(manifest["dataset"]), seed=manifest["seed"]).test
    truth = InProcessSame(tiny_repository, policy="monitor").infer(test.images[:64]).labels
    return test.images[:64], truth


def _raw_infer(url, x, headers=None, outputs=None, parameters=None):
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("IMAGE", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
        return client.infer(
            "same", [tensor], outputs=requested, headers=headers, parameters=parameters
        )


def _bearer(deployment, name):
    return {"authorization": f"Bearer {deployment.key[name]}"}


def test_calls_without_a_valid_key_are_refused(deployment):
    x = np.zeros((1, *SHAPE), np.float32)
    for headers in (None, {"authorization": "Bearer same_alice_0000"}):
        with pytest.raises(InferenceServerException) as caught:
            _raw_infer(deployment.url("A"), x, headers)
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    with grpcclient.InferenceServerClient(deployment.url("A")) as client:
        assert client.is_server_live()  # health probes need no key
        with pytest.raises(InferenceServerException, match="API key"):
            client.get_model_metadata("same")
    with SameClient(deployment.url("A"), api_key="wrong", retries=0) as client:
        with pytest.raises(SameClientError, match="refused the API key"):
            client.classify(x)


def test_a_revoked_key_stops_working_at_once(deployment):
    x = np.zeros((1, *SHAPE), np.float32)
    headers = _bearer(deployment, "mallory")
    assert _raw_infer(deployment.url("A"), x, headers).as_numpy("PROBS").shape == (1, 10)
    deployment.keys.revoke("mallory")
    with pytest.raises(InferenceServerException, match="revoked"):
        _raw_infer(deployment.url("B"), x, headers)


def test_no_public_request_reads_the_internal_output(deployment, digits):
    x = digits[0][:4]
    headers = _bearer(deployment, "alice")
    with pytest.raises(InferenceServerException, match="not available to clients") as caught:
        _raw_infer(deployment.url("A"), x, headers, outputs=["PROBS", ACCOUNT_OUTPUT])
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    everything = _raw_infer(deployment.url("A"), x, headers).get_response()
    assert sorted(o.name for o in everything.outputs) == ["LABEL", "PROBS"]
    assert len(everything.raw_output_contents) == 2
    # behind the gateway Triton does produce it: the gateway is what withholds it
    internal = _raw_infer(
        deployment.service.triton.grpc_url, x, deployment.service.triton.grpc_headers
    )
    assert internal.as_numpy(ACCOUNT_OUTPUT).shape == (4, ACCOUNT_OUTPUT_WIDTH)


def test_a_client_cannot_declare_its_own_account_state(deployment, digits):
    x, truth = digits
    answer = _raw_infer(
        deployment.url("A"),
        x,
        _bearer(deployment, "alice"),
        parameters={ACCOUNT_PARAMETER: "normal"},
    )
    forged = _raw_infer(
        deployment.url("A"),
        x,
        _bearer(deployment, "alice"),
        parameters={ACCOUNT_PARAMETER: "suspected"},
    )
    np.testing.assert_array_equal(forged.as_numpy("LABEL"), answer.as_numpy("LABEL"))
    assert (answer.as_numpy("LABEL").reshape(-1) == truth).mean() > 0.8


def test_a_thief_suspected_through_one_gateway_is_suspected_through_the_other(deployment, digits):
    x, truth = digits
    noise = make_query_set("noise", 64, SHAPE, seed=3)
    with SameClient(deployment.url("A"), api_key=deployment.key["thief"]) as thief:
        for start in range(0, 64, 16):
            thief.classify(noise[start : start + 16])
    with SameClient(deployment.url("B"), api_key=deployment.key["thief"]) as thief:
        stolen = thief.classify(x).labels
    with SameClient(deployment.url("B"), api_key=deployment.key["alice"]) as alice:
        honest = alice.classify(x).labels
    # suspected: every answer is misinformation, never the victim's label
    assert (stolen != truth).all()
    assert (honest == truth).mean() > 0.8
    state = deployment.extra["B"].accounts.store.get("thief")
    assert state.suspected_at_query > 0 and state.distinct == 128
    with urllib.request.urlopen(
        f"http://127.0.0.1:{deployment.service.gateway.metrics_port}/metrics", timeout=10
    ) as page:
        metrics = page.read().decode()
    assert 'same_gateway_queries_total{account_state="normal"}' in metrics
    assert "same_gateway_suspicions_total 1.0" in metrics


def test_suspected_accounts_can_also_be_throttled(deployment):
    noise = make_query_set("noise", 64, SHAPE, seed=5)
    headers = _bearer(deployment, "sybil")
    # under review within its first request (about 10 distinct queries): answered again at that
    # tier, which spends the throttle's one-request burst
    _raw_infer(deployment.url("E"), noise[:32], headers)
    with pytest.raises(InferenceServerException, match="limited to 0.2 requests/s") as caught:
        for _ in range(2):
            _raw_infer(deployment.url("E"), noise[:1], headers)
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    alice = _raw_infer(deployment.url("E"), noise[:1], _bearer(deployment, "alice"))
    assert alice.as_numpy("LABEL").shape == (1, 1)  # others are not throttled


def test_anonymous_mode_keys_accounts_by_address(deployment, digits):
    with SameClient(deployment.url("D")) as client:  # no key at all
        assert client.classify(digits[0][:2]).labels.shape == (2,)
    accounts = [a for a, _ in deployment.extra["D"].accounts.store.accounts()]
    assert accounts == ["peer:127.0.0.1"]  # loopback is not a network that links accounts


def test_redis_down_fails_closed_or_open_as_configured(deployment, digits):
    x = digits[0][:2]
    deployment.redis.stop()
    try:
        with pytest.raises(InferenceServerException, match="failing closed") as caught:
            _raw_infer(deployment.url("B"), x, _bearer(deployment, "alice"))
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        served = _raw_infer(deployment.url("C"), x, _bearer(deployment, "alice"))
        assert served.as_numpy("PROBS").shape == (2, 10)
    finally:
        deployment.redis.start()
    assert _raw_infer(deployment.url("B"), x, _bearer(deployment, "alice")).as_numpy("LABEL").shape
