"""Redis (StatefulSet and headless Service) and the NetworkPolicies fencing Triton and Redis."""

from __future__ import annotations

from .settings import (
    REDIS_PORT,
    TRITON_GRPC_PORT,
    TRITON_METRICS_PORT,
    DeploySettings,
)
from .shapes import (
    GATEWAY,
    REDIS,
    TRITON,
    _hardened,
    _labels,
    _meta,
    _selector,
    _service,
)


def redis_objects(s: DeploySettings) -> list[dict]:
    """One Redis with an append-only file on a volume: suspicions survive a Redis restart.
    ``noeviction``: a full Redis refuses writes (the gateways fail closed) rather than
    silently dropping an account's suspicion."""
    container = {
        "name": "redis",
        "image": s.redis_image,
        "args": [
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--port",
            str(REDIS_PORT),
        ],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
        "resources": s.redis_resources.spec(),
        "securityContext": _hardened(999),  # the redis image's own user
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(REDIS, s),
        "spec": {
            "serviceName": REDIS,
            "replicas": 1,
            "selector": {"matchLabels": _selector(REDIS)},
            "template": {
                "metadata": {"labels": _labels(REDIS)},
                "spec": {"containers": [container], "securityContext": {"fsGroup": 999}},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }
    service = _service(REDIS, s, [("redis", REDIS_PORT)])
    service["spec"]["clusterIP"] = "None"  # headless: the StatefulSet's governing Service
    return [service, statefulset]


def network_policies(s: DeploySettings) -> list[dict]:
    """Triton and Redis admit only gateway pods (and Prometheus, for Triton's metrics)."""
    gateways = {"podSelector": {"matchLabels": _selector(GATEWAY)}}
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }

    def policy(name: str, rules: list[dict]) -> dict:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(f"{name}-ingress", s),
            "spec": {
                "podSelector": {"matchLabels": _selector(name)},
                "policyTypes": ["Ingress"],
                "ingress": rules,
            },
        }

    triton = policy(
        TRITON,
        [
            {"from": [gateways], "ports": [{"port": TRITON_GRPC_PORT}]},
            {"from": [prometheus], "ports": [{"port": TRITON_METRICS_PORT}]},
        ],
    )
    out = [triton]
    if s.redis_url is None:
        out.append(policy(REDIS, [{"from": [gateways], "ports": [{"port": REDIS_PORT}]}]))
    return out
