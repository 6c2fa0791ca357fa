"""Two Tritons and two gateway processes sharing Redis, behind nginx: the replicated
deployment of deploy/k8s, on loopback with the real parts (tritonserver, redis-server, nginx)."""

from __future__ import annotations

import numpy as np
import pytest
from same_harness.cluster.checks import classify, cross_path, outage_holds, redis_outage
from same_harness.cluster.replicas import Cluster
from same_harness.load.common import benign_images

from same_defense.accounts import KeyStore, RedisStore
from same_defense.core.manifest import read_manifest

pytestmark = [pytest.mark.server, pytest.mark.redis]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    store = KeyStore(tmp_path_factory.mktemp("keys") / "keys.json")
    return store.path, {name: store.add(name) for name in ("probe", "honest", "thief")}


@pytest.fixture(scope="module")
def cluster(tiny_repository, keys, tmp_path_factory):
    keys_file, k = keys
    c = Cluster(tiny_repository, tmp_path_factory.mktemp("cluster"), keys_file, k["probe"])
    with c:
        yield c


@pytest.fixture(scope="module")
def test_images(tiny_repository) -> np.ndarray:
    """The repository's held-out test split: what an honest account sends."""
    return benign_images(read_manifest(tiny_repository))


def test_replicated_deployment_survives_a_gateway_and_a_triton(cluster, keys, test_images):
    _, k = keys

    def honest_batches(n: int, offset: int = 0) -> list[np.ndarray]:
        return [test_images[offset + 2 * i : offset + 2 * i + 2] for i in range(n)]

    # Round robin: both gateways and both Tritons answer honest calls sent to nginx.
    before = cluster.requests_per_gateway()
    for batch in honest_batches(8):
        assert classify(cluster.url, k["honest"], batch).shape == (2,)
    served = [a - b for a, b in zip(cluster.requests_per_gateway(), before, strict=True)]
    assert sum(served) == 8 and all(n > 0 for n in served), served

    # One account, two gateways: suspected through gateway 0 (state in Redis), answered with
    # the policy through gateway 1.
    rng = np.random.default_rng(1)
    noise = rng.random((640, 1, 28, 28), dtype=np.float32)
    benign = test_images[100:116]
    result = cross_path(cluster, "thief", k["thief"], k["honest"], noise, benign)
    assert result["suspected_at_distinct_query"] > 0, result
    assert result["labels_differing_from_honest"] == 1.0, result
    assert result["gateway_1_suspected_queries"] == len(benign), result

    # Redis frozen: both gateways refuse (fail closed, the default), then serve again.
    outage = redis_outage(cluster, k["honest"], benign[:2], pause_s=2.0, probe_every_s=0.5)
    assert outage_holds(outage), outage
    assert all(g["served"] == 0 and g["probes"] > 0 for g in outage["during"]), outage

    # Crash gateway 0 and Triton 0: nginx moves calls to the survivors, nothing fails.
    cluster.kill_gateway(0)
    cluster.kill_triton(0)
    survivor = cluster.requests_per_gateway()[1]
    for batch in honest_batches(6, offset=200):
        assert classify(cluster.url, k["honest"], batch).shape == (2,)
    assert cluster.requests_per_gateway()[1] - survivor == 6
    # The suspicion outlived the crash (Redis), and the survivor still applies it.
    assert RedisStore(cluster.redis.url).get("thief").suspected_at_query > 0
    honest = classify(cluster.url, k["honest"], benign)
    thief = classify(cluster.url, k["thief"], benign)
    assert np.all(thief != honest)
    assert any("upstream" in line for line in cluster.balancer.upstream_errors())
