"""The ``same`` ensemble run in-process: the repository's ONNX graphs in onnxruntime and the
same defense code as the Triton step. For calibration, fast offline sweeps and benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..core import Decision, DefenseSettings, GraphArrays, InvalidInput, defend_requests
from ..core.layout import (
    CONFIG_NAME,
    DEFAULT_POLICY,
    DEFENSE,
    IMAGE,
    ONNX_FILES,
    RECONSTRUCTOR,
    VICTIM,
)
from ..core.manifest import load_verified_manifest, settings_from_manifest


def providers_for(device: str) -> list:
    """onnxruntime providers for ``device`` ("cpu", "cuda" or "cuda:N"); a ValueError with
    the reason when CUDA is asked for and this onnxruntime cannot offer it."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return ["CPUExecutionProvider"]
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:N")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ValueError(
            f"device {device!r}: onnxruntime {ort.__version__} offers only {available}; "
            "install onnxruntime-gpu (pip install 'same-defense[gpu]'; docs/performance.md: "
            "GPU path)"
        )
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def open_session(path: Path, options: ort.SessionOptions, device: str) -> ort.InferenceSession:
    providers = providers_for(device)
    session = ort.InferenceSession(str(path), options, providers=providers)
    # onnxruntime drops a provider it cannot start with only a log line: refuse that.
    if len(providers) > 1 and "CUDAExecutionProvider" not in session.get_providers():
        raise RuntimeError(f"{path}: CUDAExecutionProvider failed to start on {device}")
    return session


class GraphRunner:
    """Runs the victim and reconstructor ONNX graphs on batches of images."""

    def __init__(
        self, victim_onnx: Path, reconstructor_onnx: Path, threads: int = 0, device: str = "cpu"
    ) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.victim = open_session(victim_onnx, options, device)
        self.reconstructor = open_session(reconstructor_onnx, options, device)

    def run(self, images: np.ndarray, batch_size: int = 256) -> GraphArrays:
        """What the defense step receives for ``images``: the victim's logits and the
        reconstructor's three outputs, in batches of ``batch_size``."""
        parts: list[list[np.ndarray]] = [[], [], [], []]
        for i in range(0, len(images), batch_size):
            x = np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)
            parts[0].append(self.victim.run(None, {IMAGE: x})[0])
            for k, out in enumerate(self.reconstructor.run(None, {IMAGE: x}), start=1):
                parts[k].append(out)
        return GraphArrays(*(np.concatenate(p) for p in parts))


class InProcessSame:
    """``same`` without a server: same graphs, same manifest check, same decision code."""

    def __init__(self, repository: Path, policy: str | None = None, threads: int = 0) -> None:
        repository = Path(repository)
        manifest = load_verified_manifest(repository)
        served, params = defense_parameters(repository)
        self.manifest = manifest
        self.settings: DefenseSettings = settings_from_manifest(manifest, policy or served, params)
        self.graphs = GraphRunner(
            repository / ONNX_FILES[VICTIM], repository / ONNX_FILES[RECONSTRUCTOR], threads
        )

    def infer(self, images: np.ndarray, suspected: bool | str = False) -> Decision:
        """The served answer to ``images``, through the same core entry as the Triton step
        (``suspected``: the account's tier, see :func:`~same_defense.core.as_tier`)."""
        (result,) = defend_requests([self.graphs.run(images)], self.settings, [suspected])
        if isinstance(result, InvalidInput):
            raise result
        return result


def read_model_config(model_dir: Path):
    """Parse ``model_dir/config.pbtxt`` with Triton's own ModelConfig protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    text_format.Parse((Path(model_dir) / CONFIG_NAME).read_text(), config)
    return config


def defense_parameters(repository: Path) -> tuple[str, dict[str, str]]:
    """The policy the repository's defense step serves and its other config parameters, read
    as the Triton step reads them (unset policy: the contract's default)."""
    params = {
        k: v.string_value
        for k, v in read_model_config(Path(repository) / DEFENSE).parameters.items()
    }
    return params.pop("policy", DEFAULT_POLICY), params
