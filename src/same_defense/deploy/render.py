"""Kubernetes manifests for the protected deployment, as plain dicts, then YAML files.

    Internet -> Service same-gateway (LoadBalancer: gRPC 8001, HTTP 8000)
             -> Deployment same-gateway (N replicas, HPA: CPU + requests/s per pod)
                  -> Service same-triton-pods (headless; the gateways balance per call)
                     -> Deployment same-triton (HPA: queue time)
                  -> Redis (StatefulSet same-redis, or an operator's URL): account state

Triton is never public: its Service is cluster-internal, a NetworkPolicy admits only gateway
pods (and Prometheus), and it demands the restricted-protocol key from the Secret
``same-triton-key`` on every call but health and metadata. Secrets are not rendered (they must
not be committed): see deploy/README.md for the two ``kubectl create secret`` commands.

This module assembles the files; each resource group has its own module: :mod:`.triton`,
:mod:`.gateway`, :mod:`.redis_network`, :mod:`.monitoring`, over :mod:`.shapes`.
"""

from __future__ import annotations

from .gateway import gateway_deployment, gateway_hpa, gateway_service
from .monitoring import adapter_config_map
from .redis_network import network_policies, redis_objects
from .settings import DeploySettings
from .shapes import GATEWAY, PART_OF, TRITON, _pdb
from .triton import (
    config_map,
    triton_deployment,
    triton_hpa,
    triton_pods_service,
    triton_service,
)

HEADER = (
    "# Rendered by `same-deploy` (src/same_defense/deploy/render.py) from the settings the\n"
    "# embedded server uses; do not edit by hand: change the settings and render again.\n"
)


def to_yaml(objects: list[dict]) -> str:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - install problem
        raise SystemExit("same-deploy needs PyYAML: pip install -e '.[dev]'") from exc

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str):
        # Model configs and adapter rules stay readable: block style for multi-line text.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    docs = [yaml.dump(o, Dumper=Dumper, sort_keys=False, width=100) for o in objects]
    return HEADER + "---\n" + "---\n".join(docs)


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
            triton_pods_service(s),
            _pdb(TRITON, s),
            triton_hpa(s),
        ],
        "20-gateway.yaml": [
            gateway_deployment(s),
            gateway_service(s),
            _pdb(GATEWAY, s),
            gateway_hpa(s),
        ],
        "40-network-policy.yaml": network_policies(s),
        "50-monitoring.yaml": [adapter_config_map(s)],
    }
    if s.redis_url is None:
        files["30-redis.yaml"] = redis_objects(s)
    return dict(sorted(files.items()))
