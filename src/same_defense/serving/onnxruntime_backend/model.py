"""A Python-based Triton backend named ``onnxruntime`` for servers without the native one.

The pip-installed Triton (nvidia-pytriton) ships no ``libtriton_onnxruntime.so``. Placed at
``<backend-directory>/onnxruntime/model.py``, this file serves every model whose config says
``backend: "onnxruntime"`` with the onnxruntime package, so one model repository loads
unchanged here and in the NGC container (which uses its native backend instead).

It honours ``default_model_filename`` and the ``intra_op_thread_count`` /
``inter_op_thread_count`` parameters of the native backend, runs all requests that dynamic
batching hands over as one onnxruntime call, and refuses to load a graph whose inputs or
outputs do not match the config. An instance of kind KIND_GPU runs on onnxruntime's
CUDAExecutionProvider on the instance's GPU (the ``gpu`` extra installs onnxruntime-gpu); if
CUDA is not available the model fails to load with the reason, it never falls back to the CPU.
"""

import json
import os

import numpy as np
import onnxruntime as ort

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: only execution_providers() is usable
    pb_utils = None

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def execution_providers(kind, device_id, available):
    """onnxruntime providers for a Triton instance of ``kind`` ("GPU"/"CPU", as Triton passes
    ``model_instance_kind``); raises ValueError with the reason when a GPU instance cannot
    have CUDA. CPU stays listed after CUDA for the few operators CUDA does not implement."""
    if kind not in ("GPU", "KIND_GPU"):
        return [CPU]
    if CUDA not in available:
        raise ValueError(
            f"instance kind GPU needs onnxruntime's {CUDA}, but onnxruntime {ort.__version__} "
            f"offers only {list(available)}: install onnxruntime-gpu (pip install "
            "'same-defense[gpu]'; docs/performance.md: GPU path) or serve with "
            "instance_kind=KIND_CPU"
        )
    return [(CUDA, {"device_id": int(device_id)}), CPU]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.exists(path):
            raise pb_utils.TritonModelException(f"{config['name']}: ONNX file {path} is missing")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "0"))
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", "0"))
        kind = args.get("model_instance_kind", "CPU")
        try:
            providers = execution_providers(
                kind, args.get("model_instance_device_id", "0"), ort.get_available_providers()
            )
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{config['name']}: {exc}") from exc
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # a broken or truncated file: say which and why
            raise pb_utils.TritonModelException(
                f"{config['name']}: cannot load {path}: {exc}"
            ) from exc
        # onnxruntime drops a provider it cannot start (no driver, missing CUDA libraries)
        # with only a log line; a GPU instance silently running on the CPU is refused here.
        if providers[0] != CPU and CUDA not in self.session.get_providers():
            raise pb_utils.TritonModelException(
                f"{config['name']}: {CUDA} failed to start on GPU "
                f"{args.get('model_instance_device_id')} (onnxruntime's log says why)"
            )
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        if set(self.inputs) != graph_inputs or not set(self.outputs) <= graph_outputs:
            raise pb_utils.TritonModelException(
                f"{config['name']}: config tensors {self.inputs} -> {self.outputs} do not match "
                f"the graph's {sorted(graph_inputs)} -> {sorted(graph_outputs)}"
            )

    def execute(self, requests):
        feeds = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            for name in self.inputs
        }
        sizes = [len(a) for a in feeds[self.inputs[0]]]
        # A lone request (every request at low load) goes to onnxruntime as it came: no copy.
        batch = {
            name: parts[0] if len(parts) == 1 else np.concatenate(parts)
            for name, parts in feeds.items()
        }
        try:
            results = self.session.run(self.outputs, batch)
        except Exception as exc:
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        if len(requests) == 1:
            tensors = [pb_utils.Tensor(n, v) for n, v in zip(self.outputs, results, strict=True)]
            return [pb_utils.InferenceResponse(output_tensors=tensors)]
        responses, start = [], 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor(name, value[start : start + n])
                for name, value in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
