"""The GPU path's CPU-only parts: settings and configs, provider choice, device checks, the
prepared `make gpu-check` script and its error on a machine without CUDA."""

from __future__ import annotations

import importlib.util
import json

import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from same_harness.bench import gpu_check
from same_harness.load.common import parse_overrides
from tritonclient.grpc import model_config_pb2

from same_defense.export import build
from same_defense.export.model_configs import ServingSettings, render_configs
from same_defense.runtime.inprocess import providers_for
from same_defense.serving.embedded import _BACKEND_SOURCE
from same_defense.train import DeviceUnavailable, TrainConfig, resolve_device

HAS_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_TORCH_CUDA = torch.cuda.is_available()


def _kinds(text: str) -> list[int]:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    return [g.kind for g in config.instance_group]


def test_kind_gpu_renders_gpu_instances_for_the_onnx_models_only():
    configs = render_configs(ServingSettings(instance_kind="KIND_GPU"))
    gpu, cpu = (
        model_config_pb2.ModelInstanceGroup.KIND_GPU,
        model_config_pb2.ModelInstanceGroup.KIND_CPU,
    )
    assert _kinds(configs["victim"]) == [gpu]
    assert _kinds(configs["reconstructor"]) == [gpu]
    assert _kinds(configs["defense"]) == [cpu]  # numpy work: stays on the CPU
    assert _kinds(render_configs(ServingSettings())["reconstructor"]) == [cpu]  # the default


def test_instance_kind_is_checked_and_settable_from_the_command_line():
    with pytest.raises(ValueError, match="KIND_CPU, KIND_GPU"):
        ServingSettings(instance_kind="GPU")
    assert parse_overrides(["instance_kind=KIND_GPU"]) == {"instance_kind": "KIND_GPU"}


def _backend_module():
    """The embedded server's onnxruntime backend, imported outside Triton."""
    spec = importlib.util.spec_from_file_location("ort_backend_under_test", _BACKEND_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backend_uses_cuda_for_gpu_instances_and_says_why_it_cannot():
    backend = _backend_module()
    cpu_only = ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert backend.execution_providers("CPU", "0", both) == ["CPUExecutionProvider"]
    assert backend.execution_providers("GPU", "1", both) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        backend.execution_providers("GPU", "0", cpu_only)


def test_in_process_providers():
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="expected cpu, cuda or cuda:N"):
        providers_for("tpu")
    if not HAS_ORT_CUDA:
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            providers_for("cuda:0")


def test_training_device_is_checked():
    assert resolve_device("cpu").type == "cpu"
    assert TrainConfig().device == "cpu"
    with pytest.raises(DeviceUnavailable, match="only cpu and cuda"):
        resolve_device("mps")
    if not HAS_TORCH_CUDA:
        with pytest.raises(DeviceUnavailable, match="--device cuda"):
            resolve_device("cuda")


@pytest.mark.skipif(HAS_TORCH_CUDA, reason="checks the error on a machine without CUDA")
def test_same_build_refuses_cuda_without_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build.parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda" in capsys.readouterr().err


def test_gpu_check_plan():
    args = gpu_check.parse_args(["--mae-epochs", "5", "--workdir", "/w"])
    steps = gpu_check.plan(args)
    assert [s.name for s in steps] == ["build", "bench", "evaluate"]
    build_argv = steps[0].argv
    assert build_argv[build_argv.index("--preset") + 1] == "paper"
    assert build_argv[build_argv.index("--device") + 1] == "cuda"
    assert build_argv[build_argv.index("--mae-epochs") + 1] == "5"
    bench = steps[1].argv
    assert bench[bench.index("--set") + 1] == "instance_kind=KIND_GPU"
    assert bench[bench.index("--repository") + 1] == "/w/model_repository"
    assert "--quick" in steps[2].argv
    skip = gpu_check.parse_args(["--skip-build"])
    assert [s.name for s in gpu_check.plan(skip)] == ["bench", "evaluate"]


def test_gpu_check_serves_the_onnx_models_on_gpu():
    manifest = {"input_shape": [1, 28, 28], "class_names": [str(i) for i in range(10)]}
    configs = gpu_check.gpu_configs(manifest)
    assert "kind: KIND_GPU" in configs["reconstructor"] and "kind: KIND_GPU" in configs["victim"]
    assert "kind: KIND_CPU" in configs["defense"]


@pytest.mark.skipif(HAS_TORCH_CUDA and HAS_ORT_CUDA, reason="this machine has CUDA")
def test_gpu_check_stops_with_the_reason_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out), "--workdir", str(tmp_path)]) == 2
    report = json.loads(out.read_text())
    assert "cuda" in report["error"].lower() and report["steps"] == {}
