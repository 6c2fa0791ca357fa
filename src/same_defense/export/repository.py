"""Write the Triton model repository: configs, ONNX graphs, the defense code and its manifest.

Layout (``same`` is the only model clients are meant to call)::

    victim/1/model.onnx          IMAGE -> LOGITS                  backend "onnxruntime"
    reconstructor/1/model.onnx   IMAGE -> RECON_ERROR, SHADOW_LOGITS, INPUT_STATS
    defense/1/model.py           Python step: check, score, flag, respond (from the package)
    defense/1/same_core/         numpy-only copy of ``same_defense.core`` (written here)
    defense/1/same_calibration.json   threshold, alpha, shapes, classes, ONNX SHA-256
    same/                        the ensemble: IMAGE -> PROBS, LABEL

The configs are explicit (no auto-complete) and valid both for the NGC container's native
onnxruntime backend and for the embedded server's Python-based ``onnxruntime`` backend.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import core
from ..core.accounts import ACCOUNT_OUTPUT
from ..core.manifest import MANIFEST_NAME, sha256_file

MANIFEST_VERSION = 1
# The Triton step ships inside the package (package data), so a pip-installed same-build
# writes a complete repository without a checkout.
DEFENSE_STEP_SOURCE = Path(__file__).resolve().parents[1] / "serving" / "triton_step" / "model.py"
ONNX_FILES = {"victim": "victim/1/model.onnx", "reconstructor": "reconstructor/1/model.onnx"}
# A provider's own ONNX victim, kept verbatim beside the served wrapper (victim/1/model.onnx
# adds its preprocessing). Triton loads only version folders, so this file is not served.
PROVIDED_VICTIM_FILE = "victim/provided.onnx"
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU")


@dataclass(frozen=True)
class ServingSettings:
    """What shapes the served repository; the defaults are the tuned CPU settings."""

    input_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    # Published in the `same` config (parameter "class_names", a JSON list), so that clients
    # can name the labels they receive without the manifest.
    class_names: tuple[str, ...] = tuple(str(i) for i in range(10))
    max_batch_size: int = 256
    policy: str = "misinformation"
    # Tuned on 2 CPU cores with `make bench` (README, Performance). The reconstructor is
    # about 6x the victim's compute: two instances let it use both cores at saturation.
    victim_instances: int = 1
    reconstructor_instances: int = 2
    defense_instances: int = 1
    # 0: a free instance takes whatever is queued at once; waiting for company only added
    # latency (and CPU) at low load, and under load requests queue up by themselves.
    queue_delay_us: int = 0
    # One thread per instance: with 2, onnxruntime's spinning threads cost 4-5x the CPU per
    # image on 2 shared cores. Scale with instances instead.
    ort_intra_op_threads: int = 1
    # Batch sizes the dynamic batcher of the two ONNX models aims for (empty: as large as the
    # queue allows, up to max_batch_size). 64 splits a deep queue between the two
    # reconstructor instances (otherwise one takes up to 256 images and the other idles) and
    # keeps batches where onnxruntime is most efficient per image.
    onnx_preferred_batch_sizes: tuple[int, ...] = (64,)
    # Where the two ONNX models run: KIND_CPU, or KIND_GPU (onnxruntime's CUDA provider, in
    # the native backend and in the embedded server's Python-based one; README, GPU path).
    # The defense step is a few numpy operations per image and stays on the CPU.
    instance_kind: str = "KIND_CPU"

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValueError(
                f"instance_kind {self.instance_kind!r}: expected one of {', '.join(INSTANCE_KINDS)}"
            )


def _dims(shape: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _preferred(sizes: tuple[int, ...]) -> str:
    return f"  preferred_batch_size: {_dims(sizes)}\n" if sizes else ""


def _onnx_config(
    name: str, outputs: list[tuple[str, tuple[int, ...]]], s: ServingSettings, instances: int
) -> str:
    out = ",\n".join(
        f'  {{\n    name: "{o}"\n    data_type: TYPE_FP32\n    dims: {_dims(d)}\n  }}'
        for o, d in outputs
    )
    return f"""name: "{name}"
backend: "onnxruntime"
default_model_filename: "model.onnx"
max_batch_size: {s.max_batch_size}
input [
  {{
    name: "IMAGE"
    data_type: TYPE_FP32
    dims: {_dims(s.input_shape)}
  }}
]
output [
{out}
]
instance_group [
  {{
    count: {instances}
    kind: {s.instance_kind}
  }}
]
dynamic_batching {{
{_preferred(s.onnx_preferred_batch_sizes)}  max_queue_delay_microseconds: {s.queue_delay_us}
}}
parameters {{
  key: "intra_op_thread_count"
  value: {{ string_value: "{s.ort_intra_op_threads}" }}
}}
"""


def _defense_config(s: ServingSettings) -> str:
    c = s.num_classes
    return f"""name: "defense"
backend: "python"
max_batch_size: {s.max_batch_size}
input [
  {{
    name: "LOGITS"
    data_type: TYPE_FP32
    dims: [ {c} ]
  }},
  {{
    name: "RECON_ERROR"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }},
  {{
    name: "SHADOW_LOGITS"
    data_type: TYPE_FP32
    dims: [ {c} ]
  }},
  {{
    name: "INPUT_STATS"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }}
]
output [
  {{
    name: "PROBS"
    data_type: TYPE_FP32
    dims: [ {c} ]
  }},
  {{
    name: "LABEL"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }},
  {{
    name: "{ACCOUNT_OUTPUT}"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}
]
instance_group [
  {{
    count: {s.defense_instances}
    kind: KIND_CPU
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {s.queue_delay_us}
}}
# The response policy for flagged queries: {", ".join(core.POLICY_NAMES)}.
parameters {{
  key: "policy"
  value: {{ string_value: "{s.policy}" }}
}}
"""


def _ensemble_config(s: ServingSettings) -> str:
    return f"""name: "same"
platform: "ensemble"
max_batch_size: {s.max_batch_size}
input [
  {{
    name: "IMAGE"
    data_type: TYPE_FP32
    dims: {_dims(s.input_shape)}
  }}
]
output [
  {{
    name: "PROBS"
    data_type: TYPE_FP32
    dims: [ {s.num_classes} ]
  }},
  {{
    name: "LABEL"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }},
  # Internal: the class-conditional p-value of each query's SAME score, for the gateway's
  # account-level test. The gateway requests it, strips it and refuses clients who ask.
  {{
    name: "{ACCOUNT_OUTPUT}"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}
]
# victim and reconstructor read only IMAGE, so Triton runs them concurrently.
ensemble_scheduling {{
  step [
    {{
      model_name: "victim"
      model_version: -1
      input_map {{ key: "IMAGE" value: "IMAGE" }}
      output_map {{ key: "LOGITS" value: "victim_logits" }}
    }},
    {{
      model_name: "reconstructor"
      model_version: -1
      input_map {{ key: "IMAGE" value: "IMAGE" }}
      output_map {{ key: "RECON_ERROR" value: "recon_error" }}
      output_map {{ key: "SHADOW_LOGITS" value: "shadow_logits" }}
      output_map {{ key: "INPUT_STATS" value: "input_stats" }}
    }},
    {{
      model_name: "defense"
      model_version: -1
      input_map {{ key: "LOGITS" value: "victim_logits" }}
      input_map {{ key: "RECON_ERROR" value: "recon_error" }}
      input_map {{ key: "SHADOW_LOGITS" value: "shadow_logits" }}
      input_map {{ key: "INPUT_STATS" value: "input_stats" }}
      output_map {{ key: "PROBS" value: "PROBS" }}
      output_map {{ key: "LABEL" value: "LABEL" }}
      output_map {{ key: "{ACCOUNT_OUTPUT}" value: "{ACCOUNT_OUTPUT}" }}
    }}
  ]
}}
# What LABEL i means (JSON list), for clients; the manifest holds the same list.
parameters {{
  key: "class_names"
  value: {{ string_value: {_pbtxt_string(json.dumps(list(s.class_names)))} }}
}}
"""


def _pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal (JSON's escapes are a subset of its own)."""
    return json.dumps(text)


def render_configs(s: ServingSettings) -> dict[str, str]:
    """``{model name: config.pbtxt text}`` for the four models."""
    return {
        "victim": _onnx_config("victim", [("LOGITS", (s.num_classes,))], s, s.victim_instances),
        "reconstructor": _onnx_config(
            "reconstructor",
            [("RECON_ERROR", (1,)), ("SHADOW_LOGITS", (s.num_classes,)), ("INPUT_STATS", (3,))],
            s,
            s.reconstructor_instances,
        ),
        "defense": _defense_config(s),
        "same": _ensemble_config(s),
    }


def core_source_dir() -> Path:
    return Path(core.__file__).parent


def bundle_core(repository: Path) -> Path:
    """Copy the numpy-only defense code next to the Triton step (see ``same_defense.core``)."""
    target = repository / "defense" / "1" / "same_core"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(core_source_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def refresh_defense_code(repository: Path) -> None:
    """Put the current Triton step and core code into ``repository`` (the ONNX stay as built)."""
    step = repository / "defense" / "1" / "model.py"
    if not step.exists() or step.resolve() != DEFENSE_STEP_SOURCE.resolve():
        shutil.copyfile(DEFENSE_STEP_SOURCE, step)
    bundle_core(repository)


def write_configs(repository: Path, settings: ServingSettings) -> None:
    for name, text in render_configs(settings).items():
        folder = repository / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(text)


def write_repository(
    repository: Path,
    victim_onnx: Path,
    reconstructor_onnx: Path,
    settings: ServingSettings,
    calibration: dict,
    provided_victim: Path | None = None,
) -> Path:
    """Place the ONNX files, configs, defense code and manifest; return the manifest path.

    ``provided_victim`` (a provider's ONNX file) is copied verbatim to PROVIDED_VICTIM_FILE
    and hashed with the served graphs, so the manifest vouches for what was wrapped.
    """
    write_configs(repository, settings)
    provided = repository / PROVIDED_VICTIM_FILE
    if provided_victim is not None:
        if Path(provided_victim).resolve() != provided.resolve():
            shutil.copyfile(provided_victim, provided)
    elif provided.exists():  # left by an earlier build of another victim: not this one's
        provided.unlink()
    for src, rel in (
        (victim_onnx, ONNX_FILES["victim"]),
        (reconstructor_onnx, ONNX_FILES["reconstructor"]),
    ):
        dest = repository / rel
        if Path(src).resolve() != dest.resolve():
            shutil.copyfile(src, dest)
    refresh_defense_code(repository)
    manifest = {
        "format_version": MANIFEST_VERSION,
        **calibration,
        "serving": asdict(settings),
        "onnx_sha256": {
            rel: sha256_file(str(repository / rel))
            for rel in [*ONNX_FILES.values()] + ([PROVIDED_VICTIM_FILE] if provided_victim else [])
        },
    }
    path = repository / "defense" / "1" / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(repository: Path) -> dict:
    path = Path(repository) / "defense" / "1" / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build the repository first (make repository)")
    return json.loads(path.read_text())


def read_model_config(model_dir: Path):
    """Parse ``model_dir/config.pbtxt`` with Triton's own ModelConfig protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    text_format.Parse((Path(model_dir) / "config.pbtxt").read_text(), config)
    return config
