"""Triton objects: the model-config ConfigMap, the Deployment, its Service and its HPA."""

from __future__ import annotations

from dataclasses import replace

from ..export.model_configs import render_configs
from .settings import (
    RESTRICTED,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    UPSTREAM_KEY_HEADER,
    DeploySettings,
)
from .shapes import (
    CONFIG_MAP,
    CONFIGS_DIR,
    MODELS_DIR,
    REPOSITORY_IN_IMAGE,
    TRITON,
    TRITON_PODS,
    TRITON_QUEUE_METRIC,
    _deployment,
    _hardened,
    _hpa,
    _http_probe,
    _key_env,
    _meta,
    _pods_metric,
    _scrape,
    _service,
)

# Model configs -------------------------------------------------------------------------


def model_configs(s: DeploySettings) -> dict[str, str]:
    """``config.pbtxt`` per model, exactly what ``same-build`` writes for these settings; with
    ``gpu`` the two ONNX models run as GPU instances (``ServingSettings.instance_kind``; the
    Python defense step stays on CPU)."""
    serving = replace(s.serving, instance_kind="KIND_GPU") if s.gpu else s.serving
    return render_configs(serving)


def config_map(s: DeploySettings) -> dict:
    data = {f"{name}.pbtxt": text for name, text in sorted(model_configs(s).items())}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(CONFIG_MAP, s), "data": data}


# Triton --------------------------------------------------------------------------------


def triton_args(s: DeploySettings) -> list[str]:
    lock = f"{RESTRICTED}:{UPSTREAM_KEY_HEADER}=$(SAME_GATEWAY_KEY)"
    return [
        f"--model-repository={MODELS_DIR}",
        f"--http-port={TRITON_HTTP_PORT}",
        f"--grpc-port={TRITON_GRPC_PORT}",
        f"--metrics-port={TRITON_METRICS_PORT}",
        "--allow-metrics=true",
        f"--allow-gpu-metrics={str(s.gpu).lower()}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        # The same lock on both protocols; health (the kubelet's probes) and metadata stay
        # open, as in the embedded deployment.
        f"--grpc-restricted-protocol={lock}",
        f"--http-restricted-api={lock}",
    ]


def _copy_repository_script(s: DeploySettings) -> str:
    # The repository image holds the built repository (ONNX files, manifest, defense step);
    # the configs come from the ConfigMap, rendered from the same settings as same-build's.
    names = " ".join(sorted(model_configs(s)))
    return (
        f"set -e; cp -R {REPOSITORY_IN_IMAGE}/. {MODELS_DIR}/; "
        f"for m in {names}; do cp {CONFIGS_DIR}/$m.pbtxt {MODELS_DIR}/$m/config.pbtxt; done"
    )


def triton_deployment(s: DeploySettings) -> dict:
    ports = [
        {"name": "http", "containerPort": TRITON_HTTP_PORT},
        {"name": "grpc", "containerPort": TRITON_GRPC_PORT},
        {"name": "metrics", "containerPort": TRITON_METRICS_PORT},
    ]
    container = {
        "name": "tritonserver",
        "image": s.triton_image,
        "command": ["tritonserver"],
        "args": triton_args(s),
        "env": [_key_env()],
        "ports": ports,
        # Loading the ensemble takes seconds to minutes: the startup probe holds the other
        # two off until it is READY, so a slow start is not killed as dead.
        "startupProbe": _http_probe("/v2/health/ready", "http", 5, 60),
        "readinessProbe": _http_probe("/v2/health/ready", "http", 5, 3),
        "livenessProbe": _http_probe("/v2/health/live", "http", 10, 3),
        "resources": s.triton_resources.spec(1 if s.gpu else 0),
        "securityContext": _hardened(1000),  # triton-server, the NGC image's own user
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    init = {
        "name": "model-repository",
        "image": s.repository_image,
        "command": ["sh", "-c", _copy_repository_script(s)],
        "securityContext": _hardened(1000),
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR},
            {"name": "configs", "mountPath": CONFIGS_DIR, "readOnly": True},
        ],
    }
    pod: dict = {
        "initContainers": [init],
        "containers": [container],
        "terminationGracePeriodSeconds": 30,
        "volumes": [
            {"name": "models", "emptyDir": {}},
            {"name": "configs", "configMap": {"name": CONFIG_MAP}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}},
        ],
    }
    if s.gpu:
        pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return _deployment(TRITON, s, s.triton_replicas, pod, _scrape(TRITON_METRICS_PORT))


def triton_service(s: DeploySettings) -> dict:
    return _service(
        TRITON,
        s,
        [
            ("grpc", TRITON_GRPC_PORT),
            ("http", TRITON_HTTP_PORT),
            ("metrics", TRITON_METRICS_PORT),
        ],
    )


def triton_hpa(s: DeploySettings) -> dict:
    return _hpa(
        TRITON,
        s,
        s.triton_replicas,
        s.triton_max_replicas,
        [_pods_metric(TRITON_QUEUE_METRIC, s.triton_queue_us_target)],
    )


def triton_pods_service(s: DeploySettings) -> dict:
    """Headless: DNS answers every ready Triton pod's address, so the gateways' gRPC
    round-robin policy (``--upstream dns:///...``) spreads calls over all of them."""
    service = _service(TRITON_PODS, s, [("grpc", TRITON_GRPC_PORT)])
    service["spec"]["selector"] = _service(TRITON, s, [])["spec"]["selector"]
    service["spec"]["clusterIP"] = "None"
    return service
