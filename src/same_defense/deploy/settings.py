"""What the Kubernetes manifests are rendered from.

Everything the embedded deployment also knows comes from the code it runs: the model configs
(:func:`same_defense.export.model_configs.render_configs` on :class:`ServingSettings`), Triton's
ports (:class:`EmbeddedTriton`'s defaults), the gateway's public ports
(:class:`ProtectedService`'s defaults), the restricted-protocol categories and key header.
Only what exists solely in a cluster (images, replicas, resources, autoscaling targets) is
set here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..export.model_configs import ServingSettings
from ..serving.deployment import KEY_HEADER, ProtectedService
from ..serving.embedded import RESTRICTED_CATEGORIES, EmbeddedTriton


def _default(cls: type, name: str):
    return next(f.default for f in fields(cls) if f.name == name)


# Triton's own ports, as the embedded server uses them.
TRITON_HTTP_PORT: int = _default(EmbeddedTriton, "http_port")
TRITON_GRPC_PORT: int = _default(EmbeddedTriton, "grpc_port")
TRITON_METRICS_PORT: int = _default(EmbeddedTriton, "metrics_port")
# The gateway's public ports, as `same-serve` publishes them.
GATEWAY_GRPC_PORT: int = _default(ProtectedService, "public_port")
GATEWAY_HTTP_PORT: int = _default(ProtectedService, "http_port")
# `same-serve --gateway-metrics-port` default; in a pod the gateway binds it on every
# address (`--metrics-host 0.0.0.0`) so Prometheus scrapes it with no forwarder.
GATEWAY_METRICS_PORT = 8003
# The admin API (`same-gateway --admin-listen`), on the pod's loopback only: reached with
# `kubectl port-forward`, never through a Service.
GATEWAY_ADMIN_PORT = 8004
REDIS_PORT = 6379

RESTRICTED = RESTRICTED_CATEGORIES
UPSTREAM_KEY_HEADER = KEY_HEADER


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    memory_limit: str

    def spec(self, gpus: int = 0) -> dict:
        limits: dict = {"memory": self.memory_limit}
        if gpus:
            limits["nvidia.com/gpu"] = gpus
        return {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits}


@dataclass(frozen=True)
class DeploySettings:
    namespace: str = "same"
    serving: ServingSettings = field(default_factory=ServingSettings)
    # Images. Triton: the NGC container (native onnxruntime backend, Python backend with
    # numpy < 2 in 24.x). The other two are built from this repository (deploy/docker/).
    triton_image: str = "nvcr.io/nvidia/tritonserver:24.10-py3"
    gateway_image: str = "registry.example.com/same-defense/gateway:0.1.0"
    repository_image: str = "registry.example.com/same-defense/model-repository:0.1.0"
    redis_image: str = "redis:7.0-alpine"
    # Replicas and autoscaling.
    triton_replicas: int = 2
    triton_max_replicas: int = 8
    gateway_replicas: int = 2
    gateway_max_replicas: int = 6
    # HPA targets (per pod, through prometheus-adapter; see monitoring.yaml).
    triton_queue_us_target: int = 20_000  # mean queue time per `reconstructor` request
    gateway_requests_per_s_target: int = 150
    gateway_cpu_utilization: int = 70
    # Resources: Triton sized for the tuned CPU configs (2 reconstructor instances + victim +
    # defense, one thread each); the gateway is one Python process (one core at most).
    triton_resources: Resources = Resources("2", "2Gi", "4Gi")
    gateway_resources: Resources = Resources("1", "512Mi", "1Gi")
    redis_resources: Resources = Resources("250m", "256Mi", "1Gi")
    shm_size: str = "1Gi"  # Python backend tensors cross through /dev/shm
    # GPU: one GPU per Triton pod on nodes that have one; the ONNX models get KIND_GPU.
    gpu: bool = False
    # Redis: None renders a one-replica StatefulSet with an append-only file; a URL (e.g. an
    # operator's or a managed Redis) renders none and points the gateways at it.
    redis_url: str | None = None
    on_store_error: str = "closed"
    # Alerts (deploy/monitoring/): the calibrated per-query FPR (the manifest's target_fpr
    # with same-deploy --repository), how far the flag rate may stray from it (a factor,
    # either way) over how many queries, and how many new suspicions in 10 minutes are a burst.
    target_fpr: float = 0.01
    flag_rate_factor: float = 3.0
    flag_rate_min_queries: int = 1000
    suspicion_burst: int = 5

    @property
    def redis_target(self) -> str:
        return self.redis_url or f"redis://same-redis.{self.namespace}.svc:{REDIS_PORT}/0"
