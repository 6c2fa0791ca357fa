"""The ``same`` ensemble run in-process: the repository's ONNX graphs in onnxruntime and the
same defense code as the Triton step. For calibration, fast offline sweeps and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..core import Decision, DefenseSettings, GraphArrays, InvalidInput, defend_requests
from ..core.manifest import load_verified_manifest, settings_from_manifest
from ..export.repository import MANIFEST_NAME, ONNX_FILES, read_model_config


@dataclass(frozen=True)
class GraphOutputs:
    logits: np.ndarray  # [N, C]
    recon_error: np.ndarray  # [N, 1]
    shadow_logits: np.ndarray  # [N, C]
    input_stats: np.ndarray  # [N, 3]


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

    def run(self, images: np.ndarray, batch_size: int = 256) -> GraphOutputs:
        parts: list[list[np.ndarray]] = [[], [], [], []]
        for i in range(0, len(images), batch_size):
            x = np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)
            parts[0].append(self.victim.run(None, {"IMAGE": x})[0])
            for k, out in enumerate(self.reconstructor.run(None, {"IMAGE": x}), start=1):
                parts[k].append(out)
        return GraphOutputs(*(np.concatenate(p) for p in parts))


class InProcessSame:
    """``same`` without a server: same graphs, same manifest check, same decision code."""

    def __init__(self, repository: Path, policy: str | None = None, threads: int = 0) -> None:
        repository = Path(repository)
        manifest = load_verified_manifest(
            str(repository), str(repository / "defense" / "1" / MANIFEST_NAME)
        )
        params = {
            k: v.string_value
            for k, v in read_model_config(repository / "defense").parameters.items()
        }
        chosen = policy or params.pop("policy", "misinformation")
        params.pop("policy", None)
        self.manifest = manifest
        self.settings: DefenseSettings = settings_from_manifest(manifest, chosen, params)
        self.graphs = GraphRunner(
            repository / ONNX_FILES["victim"], repository / ONNX_FILES["reconstructor"], threads
        )

    def infer(self, images: np.ndarray, suspected: bool | str = False) -> Decision:
        """The served answer to ``images``, through the same core entry as the Triton step
        (``suspected``: the account's tier, see :func:`~same_defense.core.as_tier`)."""
        out = self.graphs.run(images)
        arrays = GraphArrays(out.logits, out.recon_error, out.shadow_logits, out.input_stats)
        (result,) = defend_requests([arrays], self.settings, [suspected])
        if isinstance(result, InvalidInput):
            raise result
        return result
