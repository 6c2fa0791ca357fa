"""The Kubernetes manifests: committed = rendered, schema-valid offline, consistent with the
code the embedded deployment runs (model configs, ports, restricted key, gateway flags)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from same_defense.core.manifest import manifest_path
from same_defense.deploy import DeploySettings, render
from same_defense.deploy.cli import main as deploy_main
from same_defense.deploy.cli import render_files
from same_defense.deploy.gateway import gateway_args
from same_defense.deploy.triton import triton_args
from same_defense.export.model_configs import ServingSettings, render_configs
from same_defense.serving.embedded import RESTRICTED_CATEGORIES

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# Oldest and newest Kubernetes versions the manifests are checked against (autoscaling/v2 and
# policy/v1 are GA since 1.23/1.21; the bundled schemas start at 1.25).
VERSIONS = ("1.27.0", "1.37.0")
VARIANTS = {
    "default": DeploySettings(),
    "gpu": DeploySettings(gpu=True),
    "external-redis": DeploySettings(redis_url="redis://redis.prod.internal:6379/2"),
    "rgb-100-classes": DeploySettings(
        serving=ServingSettings(
            input_shape=(3, 32, 32), num_classes=100, class_names=tuple(map(str, range(100)))
        )
    ),
}


def objects(settings: DeploySettings) -> list[dict]:
    return [o for objs in render(settings).values() for o in objs]


def by_kind(settings: DeploySettings, kind: str, name: str) -> dict:
    (found,) = [o for o in objects(settings) if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(deployment: dict, name: str) -> dict:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return found


def test_committed_manifests_equal_a_fresh_render():
    fresh = render_files(DeploySettings())
    committed = {p.name: p.read_text() for p in K8S.glob("*.yaml")}
    assert sorted(committed) == sorted(fresh), "run `make deploy` (same-deploy) and commit"
    for name, text in fresh.items():
        assert committed[name] == text, f"deploy/k8s/{name} is stale: run `make deploy`"
    assert deploy_main(["--check", "--out", str(K8S)]) == 0


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    assert deploy_main(["--out", str(tmp_path)]) == 0
    (tmp_path / "10-triton.yaml").write_text("# edited by hand\n")
    assert deploy_main(["--check", "--out", str(tmp_path)]) == 1
    assert "10-triton.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_schema_valid(variant, version):
    for obj in objects(VARIANTS[variant]):
        # strict: unknown fields (a typo such as "livenessprobe") fail too
        kubernetes_validate.validate(obj, version, strict=True)


def test_committed_yaml_parses_to_the_rendered_objects():
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    assert docs == objects(DeploySettings())


def test_schema_validation_catches_a_broken_object():
    deployment = by_kind(DeploySettings(), "Deployment", "same-triton")
    container(deployment, "tritonserver")["livenessprobe"] = {"httpGet": {"path": "/"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_model_configs_are_the_tracked_repository_configs():
    data = by_kind(DeploySettings(), "ConfigMap", "same-model-configs")["data"]
    for name in ("victim", "reconstructor", "defense", "same"):
        tracked = (ROOT / "model_repository" / name / "config.pbtxt").read_text()
        assert data[f"{name}.pbtxt"] == tracked


def test_gpu_variant_puts_the_onnx_models_on_the_gpu():
    s = DeploySettings(gpu=True)
    data = by_kind(s, "ConfigMap", "same-model-configs")["data"]
    assert "KIND_GPU" in data["victim.pbtxt"] and "KIND_GPU" in data["reconstructor.pbtxt"]
    assert "KIND_GPU" not in data["defense.pbtxt"]  # the Python step stays on CPU
    triton = by_kind(s, "Deployment", "same-triton")
    assert container(triton, "tritonserver")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["spec"]["template"]["spec"]["nodeSelector"]
    cpu = by_kind(DeploySettings(), "Deployment", "same-triton")
    assert "nvidia.com/gpu" not in container(cpu, "tritonserver")["resources"]["limits"]
    assert "nodeSelector" not in cpu["spec"]["template"]["spec"]


def test_triton_is_locked_and_probed_like_the_embedded_server():
    args = triton_args(DeploySettings())
    lock = f"{RESTRICTED_CATEGORIES}:same-gateway-key=$(SAME_GATEWAY_KEY)"
    assert f"--grpc-restricted-protocol={lock}" in args
    assert f"--http-restricted-api={lock}" in args  # HTTP is open for probes: lock it too
    assert "health" not in RESTRICTED_CATEGORIES  # so the kubelet's probes need no key
    c = container(by_kind(DeploySettings(), "Deployment", "same-triton"), "tritonserver")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["image"].startswith("nvcr.io/nvidia/tritonserver:") and c["image"].endswith("-py3")
    assert c["resources"]["requests"]["cpu"]


def test_only_the_gateway_is_public():
    services = [o for o in objects(DeploySettings()) if o["kind"] == "Service"]
    public = [s["metadata"]["name"] for s in services if s["spec"].get("type") == "LoadBalancer"]
    assert public == ["same-gateway"]
    policy = by_kind(DeploySettings(), "NetworkPolicy", "same-triton-ingress")
    grpc_rule = policy["spec"]["ingress"][0]
    assert grpc_rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "same-gateway"}}}
    ]


def test_selectors_and_autoscaler_targets_match():
    objs = objects(DeploySettings())
    workloads = {
        o["metadata"]["name"]: o for o in objs if o["kind"] in ("Deployment", "StatefulSet")
    }
    for o in objs:
        if o["kind"] == "Service":
            (target,) = [
                w
                for w in workloads.values()
                if o["spec"]["selector"].items()
                <= w["spec"]["template"]["metadata"]["labels"].items()
            ]
            names = {
                p["name"]
                for c in target["spec"]["template"]["spec"]["containers"]
                for p in c["ports"]
            }
            assert {p["targetPort"] for p in o["spec"]["ports"]} <= names
        if o["kind"] == "HorizontalPodAutoscaler":
            ref = o["spec"]["scaleTargetRef"]
            assert ref["kind"] == workloads[ref["name"]]["kind"]
            assert o["spec"]["minReplicas"] <= o["spec"]["maxReplicas"]
    rules = by_kind(DeploySettings(), "ConfigMap", "same-prometheus-adapter-rules")
    adapter = yaml.safe_load(rules["data"]["rules.yaml"])["rules"]
    served = {r["name"]["as"] for r in adapter}
    for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                assert m["pods"]["metric"]["name"] in served


def test_scrape_annotations_point_at_metrics_ports():
    for name in ("same-triton", "same-gateway"):
        d = by_kind(DeploySettings(), "Deployment", name)
        port = int(d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
        declared = [
            p["containerPort"]
            for c in d["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
            if p["name"] == "metrics"
        ]
        assert declared == [port]


def test_gateway_arguments_are_accepted_by_the_real_cli(monkeypatch, tmp_path):
    """Parse the manifest's arguments with `same-gateway` itself; only the server is faked."""
    import same_defense.gateway.cli as cli

    seen = {}

    class Refuse:
        def __init__(self, listen, upstream, policy, **kw):
            seen.update(listen=listen, upstream=upstream, header=policy.upstream_header, **kw)

        def start(self):
            raise OSError("not starting in a test")

    monkeypatch.setattr(cli, "GatewayServer", Refuse)
    args = [a.replace("$(SAME_GATEWAY_KEY)", "k3y") for a in gateway_args(DeploySettings())]
    # The pod's init container copies the manifest to --manifest; a missing one is refused.
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    args[args.index("--manifest") + 1] = str(manifest)
    assert cli.main(args) == 1  # argparse errors would exit 2 before this
    assert seen["upstream"] == "dns:///same-triton-pods.same.svc:8001"  # every pod, per call
    assert seen["header"] == ("triton-grpc-protocol-same-gateway-key", "k3y")
    assert seen["http_listen"] == "0.0.0.0:8000" and seen["metrics_port"] == 8003
    assert seen["metrics_host"] == "0.0.0.0"  # scraped on the pod's address: no sidecar
    assert seen["admin"].listen == "127.0.0.1:8004"  # the admin API stays on loopback
    assert str(seen["audit"].path) == "/var/log/same/audit.jsonl"


def test_external_redis_renders_no_statefulset():
    s = DeploySettings(redis_url="redis://redis.prod.internal:6379/2")
    assert "30-redis.yaml" not in render(s)
    args = gateway_args(s)
    assert args[args.index("--redis") + 1] == "redis://redis.prod.internal:6379/2"
    default = gateway_args(DeploySettings())
    assert default[default.index("--redis") + 1] == "redis://same-redis.same.svc:6379/0"


def test_repository_option_takes_shapes_from_the_manifest(tmp_path):
    repo = tmp_path / "repo"
    manifest = Path(manifest_path(repo))
    manifest.parent.mkdir(parents=True)
    names = [f"c{i}" for i in range(5)]
    manifest.write_text(
        '{"input_shape": [3, 32, 32], "class_names": ' + str(names).replace("'", '"') + "}"
    )
    out = tmp_path / "k8s"
    assert deploy_main(["--out", str(out), "--repository", str(repo)]) == 0
    docs = list(yaml.safe_load_all((out / "10-triton.yaml").read_text()))
    configs = docs[0]["data"]
    serving = replace(
        ServingSettings(), input_shape=(3, 32, 32), num_classes=5, class_names=tuple(names)
    )
    assert configs["same.pbtxt"] == render_configs(serving)["same"]
