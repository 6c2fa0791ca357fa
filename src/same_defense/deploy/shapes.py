"""Names, labels and the shared object shapes (Deployment, Service, PDB, HPA) of the manifests."""

from __future__ import annotations

from .settings import (
    DeploySettings,
)

PART_OF = "same-defense"
TRITON, GATEWAY, REDIS = "same-triton", "same-gateway", "same-redis"
# Headless Service over the Triton pods: the gateway resolves it (dns:///) and balances its
# calls over every pod, where the ClusterIP Service would pin each gateway to one pod.
TRITON_PODS = "same-triton-pods"
KEY_SECRET, KEYS_SECRET = "same-triton-key", "same-api-keys"  # see deploy/README.md
ADMIN_SECRET = "same-admin-token"
CONFIG_MAP = "same-model-configs"
ADAPTER_RULES = "same-prometheus-adapter-rules"
MODELS_DIR, CONFIGS_DIR, REPOSITORY_IN_IMAGE = "/models", "/configs", "/repository"
TRITON_QUEUE_METRIC = "same_triton_queue_us_per_request"
GATEWAY_RATE_METRIC = "same_gateway_requests_per_second"


def _meta(name: str, s: DeploySettings, **extra) -> dict:
    return {"name": name, "namespace": s.namespace, "labels": _labels(name), **extra}


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def _selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name}


def _scrape(port: int) -> dict[str, str]:
    """Annotations of Prometheus' usual ``kubernetes-pods`` scrape job."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def _key_env() -> dict:
    return {
        "name": "SAME_GATEWAY_KEY",
        "valueFrom": {"secretKeyRef": {"name": KEY_SECRET, "key": "key"}},
    }


def _http_probe(path: str, port: str, period: int, failures: int) -> dict:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _hardened(user: int) -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _deployment(name: str, s: DeploySettings, replicas: int, pod: dict, annotations: dict):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, s),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": _labels(name), "annotations": annotations},
                "spec": pod,
            },
        },
    }


def _service(name: str, s: DeploySettings, ports: list[tuple[str, int]]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, s),
        "spec": {
            "selector": _selector(name),
            "ports": [
                {
                    "name": n,
                    "port": p,
                    "targetPort": n,
                    "protocol": "TCP",
                    **({"appProtocol": "grpc"} if n == "grpc" else {}),
                }
                for n, p in ports
            ],
        },
    }


def _pdb(name: str, s: DeploySettings) -> dict:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, s),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector(name)}},
    }


def _hpa(name: str, s: DeploySettings, low: int, high: int, metrics: list[dict]) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, s),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": metrics,
            # A new Triton needs its models loaded before it helps: scale up at once, scale
            # down only after 5 quiet minutes.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def _pods_metric(name: str, value: int) -> dict:
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": str(value)},
        },
    }
