"""Kubernetes manifests for the protected deployment, as plain dicts, then YAML files.

    Internet -> Service same-gateway (LoadBalancer: gRPC 8001, HTTP 8000)
             -> Deployment same-gateway (N replicas, HPA: CPU + requests/s per pod)
                  -> Service same-triton (ClusterIP) -> Deployment same-triton (HPA: queue time)
                  -> Redis (StatefulSet same-redis, or an operator's URL): account state

Triton is never public: its Service is cluster-internal, a NetworkPolicy admits only gateway
pods (and Prometheus), and it demands the restricted-protocol key from the Secret
``same-triton-key`` on every call but health and metadata. Secrets are not rendered (they must
not be committed): see deploy/README.md for the two ``kubectl create secret`` commands.
"""

from __future__ import annotations

from dataclasses import replace

from ..core.manifest import MANIFEST_NAME
from ..export.repository import render_configs
from .settings import (
    GATEWAY_GRPC_PORT,
    GATEWAY_HTTP_PORT,
    GATEWAY_METRICS_PORT,
    METRICS_PROXY_PORT,
    REDIS_PORT,
    RESTRICTED,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    UPSTREAM_KEY_HEADER,
    DeploySettings,
)

PART_OF = "same-defense"
TRITON, GATEWAY, REDIS = "same-triton", "same-gateway", "same-redis"
KEY_SECRET, KEYS_SECRET = "same-triton-key", "same-api-keys"  # see deploy/README.md
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
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics"}  # fmt: skip


def _key_env() -> dict:
    return {
        "name": "SAME_GATEWAY_KEY",
        "valueFrom": {"secretKeyRef": {"name": KEY_SECRET, "key": "key"}},
    }


def _http_probe(path: str, port: str, period: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period,
            "timeoutSeconds": 3, "failureThreshold": failures}  # fmt: skip


def _hardened(user: int) -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


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
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                               "effect": "NoSchedule"}]  # fmt: skip
    return _deployment(TRITON, s, s.triton_replicas, pod, _scrape(TRITON_METRICS_PORT))


def triton_service(s: DeploySettings) -> dict:
    return _service(TRITON, s, [
        ("grpc", TRITON_GRPC_PORT), ("http", TRITON_HTTP_PORT), ("metrics", TRITON_METRICS_PORT),
    ])  # fmt: skip


# Gateway -------------------------------------------------------------------------------


def gateway_args(s: DeploySettings) -> list[str]:
    upstream = f"{TRITON}.{s.namespace}.svc:{TRITON_GRPC_PORT}"
    return [
        "--listen", f"0.0.0.0:{GATEWAY_GRPC_PORT}",
        "--http-listen", f"0.0.0.0:{GATEWAY_HTTP_PORT}",
        "--upstream", upstream,
        "--upstream-key", f"{UPSTREAM_KEY_HEADER}=$(SAME_GATEWAY_KEY)",
        "--manifest", f"/calibration/{MANIFEST_NAME}",
        "--keys", "/etc/same/keys/keys.json",
        "--redis", s.redis_target,
        "--on-store-error", s.on_store_error,
        "--metrics-port", str(GATEWAY_METRICS_PORT),
    ]  # fmt: skip


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
        ],
    }
    # The gateway serves its metrics on 127.0.0.1 only; this forwarder publishes them on the
    # pod's address for Prometheus (drop it once the gateway can bind its metrics elsewhere).
    metrics = {
        "name": "metrics-proxy",
        "image": s.metrics_proxy_image,
        "args": [
            f"TCP-LISTEN:{METRICS_PROXY_PORT},fork,reuseaddr",
            f"TCP:127.0.0.1:{GATEWAY_METRICS_PORT}",
        ],  # fmt: skip
        "ports": [{"name": "metrics", "containerPort": METRICS_PROXY_PORT}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },  # fmt: skip
        "securityContext": _hardened(10001),
    }
    init = {
        "name": "calibration",
        "image": s.repository_image,
        "command": ["sh", "-c",
                    f"cp {REPOSITORY_IN_IMAGE}/defense/1/{MANIFEST_NAME} /calibration/"],
        "securityContext": _hardened(10001),
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
        "volumeMounts": [{"name": "calibration", "mountPath": "/calibration"}],
    }  # fmt: skip
    pod = {
        "initContainers": [init],
        "containers": [gateway, metrics],
        "terminationGracePeriodSeconds": 30,
        "volumes": [
            {"name": "keys", "secret": {"secretName": KEYS_SECRET}},
            {"name": "calibration", "emptyDir": {}},
        ],
    }
    return _deployment(GATEWAY, s, s.gateway_replicas, pod, _scrape(METRICS_PROXY_PORT))


def gateway_service(s: DeploySettings) -> dict:
    service = _service(GATEWAY, s, [("grpc", GATEWAY_GRPC_PORT), ("http", GATEWAY_HTTP_PORT)])
    service["spec"]["type"] = "LoadBalancer"  # the deployment's only public door
    service["spec"]["externalTrafficPolicy"] = "Local"  # keep client addresses
    return service


# Redis ---------------------------------------------------------------------------------


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
        ],  # fmt: skip
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
            ],  # fmt: skip
        },
    }
    service = _service(REDIS, s, [("redis", REDIS_PORT)])
    service["spec"]["clusterIP"] = "None"  # headless: the StatefulSet's governing Service
    return [service, statefulset]


# Shared shapes -------------------------------------------------------------------------


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
            },  # fmt: skip
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
            "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP",
                       **({"appProtocol": "grpc"} if n == "grpc" else {})}
                      for n, p in ports],
        },
    }  # fmt: skip


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
    return {"type": "Pods", "pods": {"metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": str(value)}}}  # fmt: skip


def triton_hpa(s: DeploySettings) -> dict:
    return _hpa(TRITON, s, s.triton_replicas, s.triton_max_replicas,
                [_pods_metric(TRITON_QUEUE_METRIC, s.triton_queue_us_target)])  # fmt: skip


def gateway_hpa(s: DeploySettings) -> dict:
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": s.gateway_cpu_utilization}}}  # fmt: skip
    rate = _pods_metric(GATEWAY_RATE_METRIC, s.gateway_requests_per_s_target)
    return _hpa(GATEWAY, s, s.gateway_replicas, s.gateway_max_replicas, [cpu, rate])


# Network policies and the metrics adapter ----------------------------------------------


def network_policies(s: DeploySettings) -> list[dict]:
    """Triton and Redis admit only gateway pods (and Prometheus, for Triton's metrics)."""
    gateways = {"podSelector": {"matchLabels": _selector(GATEWAY)}}
    prometheus = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}  # fmt: skip

    def policy(name: str, rules: list[dict]) -> dict:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(f"{name}-ingress", s),
            "spec": {"podSelector": {"matchLabels": _selector(name)},
                     "policyTypes": ["Ingress"], "ingress": rules},
        }  # fmt: skip

    triton = policy(TRITON, [
        {"from": [gateways], "ports": [{"port": TRITON_GRPC_PORT}]},
        {"from": [prometheus], "ports": [{"port": TRITON_METRICS_PORT}]},
    ])  # fmt: skip
    out = [triton]
    if s.redis_url is None:
        out.append(policy(REDIS, [{"from": [gateways], "ports": [{"port": REDIS_PORT}]}]))
    return out


def adapter_rules() -> str:
    """prometheus-adapter rules for the two HPA metrics (merge into the adapter's config).

    Triton's queue time is cumulative microseconds; divided by requests over the same window
    it is the mean wait per request of the ``reconstructor``, the ensemble's costliest step.
    """
    labels = "resources:\n    overrides:\n      namespace: {resource: namespace}\n" \
             "      pod: {resource: pod}\n"  # fmt: skip
    queue = (
        'sum(rate(nv_inference_queue_duration_us{<<.LabelMatchers>>,model="reconstructor"}[1m]))'
        " by (<<.GroupBy>>) / clamp_min(sum(rate(nv_inference_request_success"
        '{<<.LabelMatchers>>,model="reconstructor"}[1m])) by (<<.GroupBy>>), 1)'
    )
    rate = "sum(rate(same_gateway_requests_total{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)"
    return (
        "rules:\n"
        '- seriesQuery: \'nv_inference_queue_duration_us{namespace!="",pod!=""}\'\n'
        f"  {labels}"
        f'  name: {{matches: "^nv_inference_queue_duration_us$", as: "{TRITON_QUEUE_METRIC}"}}\n'
        f"  metricsQuery: '{queue}'\n"
        '- seriesQuery: \'same_gateway_requests_total{namespace!="",pod!=""}\'\n'
        f"  {labels}"
        f'  name: {{matches: "^same_gateway_requests_total$", as: "{GATEWAY_RATE_METRIC}"}}\n'
        f"  metricsQuery: '{rate}'\n"
    )


def adapter_config_map(s: DeploySettings) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(ADAPTER_RULES, s),
            "data": {"rules.yaml": adapter_rules()}}  # fmt: skip


# Files ---------------------------------------------------------------------------------


def render(s: DeploySettings | None = None) -> dict[str, list[dict]]:
    """``{file name: objects}``, in the order ``kubectl apply -f deploy/k8s`` wants them."""
    s = s or DeploySettings()
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": s.namespace, "labels": {"app.kubernetes.io/part-of": PART_OF}},
    }
    files = {
        "00-namespace.yaml": [namespace],
        "10-triton.yaml": [
            config_map(s),
            triton_deployment(s),
            triton_service(s),
            _pdb(TRITON, s),
            triton_hpa(s),
        ],  # fmt: skip
        "20-gateway.yaml": [
            gateway_deployment(s),
            gateway_service(s),
            _pdb(GATEWAY, s),
            gateway_hpa(s),
        ],  # fmt: skip
        "40-network-policy.yaml": network_policies(s),
        "50-monitoring.yaml": [adapter_config_map(s)],
    }
    if s.redis_url is None:
        files["30-redis.yaml"] = redis_objects(s)
    return dict(sorted(files.items()))
