"""Gateway objects: the Deployment, the public Service, the HPA."""

from __future__ import annotations

from ..core.layout import MANIFEST_FILE, MANIFEST_NAME
from .settings import (
    GATEWAY_ADMIN_PORT,
    GATEWAY_GRPC_PORT,
    GATEWAY_HTTP_PORT,
    GATEWAY_METRICS_PORT,
    TRITON_GRPC_PORT,
    UPSTREAM_KEY_HEADER,
    DeploySettings,
)
from .shapes import (
    ADMIN_SECRET,
    GATEWAY,
    GATEWAY_RATE_METRIC,
    KEYS_SECRET,
    REPOSITORY_IN_IMAGE,
    TRITON_PODS,
    _deployment,
    _hardened,
    _hpa,
    _http_probe,
    _key_env,
    _pods_metric,
    _scrape,
    _service,
)

AUDIT_DIR = "/var/log/same"


def gateway_args(s: DeploySettings) -> list[str]:
    # Every Triton pod through the headless Service, balanced per call (gateway/upstream.py).
    upstream = f"dns:///{TRITON_PODS}.{s.namespace}.svc:{TRITON_GRPC_PORT}"
    return [
        "--listen",
        f"0.0.0.0:{GATEWAY_GRPC_PORT}",
        "--http-listen",
        f"0.0.0.0:{GATEWAY_HTTP_PORT}",
        "--upstream",
        upstream,
        "--upstream-key",
        f"{UPSTREAM_KEY_HEADER}=$(SAME_GATEWAY_KEY)",
        "--manifest",
        f"/calibration/{MANIFEST_NAME}",
        "--keys",
        "/etc/same/keys/keys.json",
        "--redis",
        s.redis_target,
        "--on-store-error",
        s.on_store_error,
        "--metrics-host",
        "0.0.0.0",
        "--metrics-port",
        str(GATEWAY_METRICS_PORT),
        "--admin-listen",
        f"127.0.0.1:{GATEWAY_ADMIN_PORT}",
        "--admin-token-file",
        "/etc/same/admin/token",
        # The pod's copy of the trail; the shared, lasting one is the Redis stream.
        "--audit-log",
        f"{AUDIT_DIR}/audit.jsonl",
    ]


def gateway_deployment(s: DeploySettings) -> dict:
    gateway = {
        "name": "gateway",
        "image": s.gateway_image,
        "command": ["same-gateway"],
        "args": gateway_args(s),
        "env": [_key_env()],
        "ports": [
            {"name": "grpc", "containerPort": GATEWAY_GRPC_PORT},
            {"name": "http", "containerPort": GATEWAY_HTTP_PORT},
            {"name": "metrics", "containerPort": GATEWAY_METRICS_PORT},
        ],
        # The gateway's own KServe health endpoints: no key needed.
        "readinessProbe": _http_probe("/v2/health/ready", "http", 5, 3),
        "livenessProbe": _http_probe("/v2/health/live", "http", 10, 3),
        # Out of the Service's endpoints before SIGTERM, so the balancer stops sending first.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "resources": s.gateway_resources.spec(),
        "securityContext": _hardened(10001),
        "volumeMounts": [
            {"name": "keys", "mountPath": "/etc/same/keys", "readOnly": True},
            {"name": "calibration", "mountPath": "/calibration", "readOnly": True},
            {"name": "admin-token", "mountPath": "/etc/same/admin", "readOnly": True},
            {"name": "audit", "mountPath": AUDIT_DIR},
        ],
    }
    init = {
        "name": "calibration",
        "image": s.repository_image,
        "command": [
            "sh",
            "-c",
            f"cp {REPOSITORY_IN_IMAGE}/{MANIFEST_FILE} /calibration/",
        ],
        "securityContext": _hardened(10001),
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
        "volumeMounts": [{"name": "calibration", "mountPath": "/calibration"}],
    }
    pod = {
        "initContainers": [init],
        "containers": [gateway],
        "terminationGracePeriodSeconds": 30,
        "volumes": [
            {"name": "keys", "secret": {"secretName": KEYS_SECRET}},
            {"name": "calibration", "emptyDir": {}},
            {"name": "admin-token", "secret": {"secretName": ADMIN_SECRET}},
            {"name": "audit", "emptyDir": {"sizeLimit": "256Mi"}},
        ],
    }
    return _deployment(GATEWAY, s, s.gateway_replicas, pod, _scrape(GATEWAY_METRICS_PORT))


def gateway_service(s: DeploySettings) -> dict:
    service = _service(GATEWAY, s, [("grpc", GATEWAY_GRPC_PORT), ("http", GATEWAY_HTTP_PORT)])
    service["spec"]["type"] = "LoadBalancer"  # the deployment's only public door
    service["spec"]["externalTrafficPolicy"] = "Local"  # keep client addresses
    return service


def gateway_hpa(s: DeploySettings) -> dict:
    cpu = {
        "type": "Resource",
        "resource": {
            "name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": s.gateway_cpu_utilization},
        },
    }
    rate = _pods_metric(GATEWAY_RATE_METRIC, s.gateway_requests_per_s_target)
    return _hpa(GATEWAY, s, s.gateway_replicas, s.gateway_max_replicas, [cpu, rate])
