"""The ``config.pbtxt`` of each model in the Triton repository, from ``ServingSettings``.

The configs are explicit (no auto-complete) and valid both for the NGC container's native
onnxruntime backend and for the embedded server's Python-based ``onnxruntime`` backend.
``same_defense.export.repository`` writes them with the rest of the repository.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import core
from ..core.accounts import ACCOUNT_OUTPUT_WIDTH
from ..core.layout import ACCOUNT_OUTPUT, DEFAULT_POLICY

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
    policy: str = DEFAULT_POLICY
    # Tuned on 2 CPU cores with `make bench` (docs/performance.md). The reconstructor is
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
    # the native backend and in the embedded server's Python-based one; docs/performance.md,
    # GPU path).
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
    dims: [ {ACCOUNT_OUTPUT_WIDTH} ]
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
  # Internal, per query: the class-conditional p-value of its SAME score, the predicted class
  # and its flag, for the gateway's account-level test. The gateway requests it, strips it
  # and refuses clients who ask.
  {{
    name: "{ACCOUNT_OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {ACCOUNT_OUTPUT_WIDTH} ]
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


def write_configs(repository: Path, settings: ServingSettings) -> None:
    for name, text in render_configs(settings).items():
        folder = repository / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(text)
