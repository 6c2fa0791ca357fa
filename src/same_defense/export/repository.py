"""Write the Triton model repository: configs, ONNX graphs, the defense code and its manifest.

Layout (``same`` is the only model clients are meant to call)::

    victim/1/model.onnx          IMAGE -> LOGITS                  backend "onnxruntime"
    reconstructor/1/model.onnx   IMAGE -> RECON_ERROR, SHADOW_LOGITS, INPUT_STATS
    defense/1/model.py           Python step: check, score, flag, respond (from the package)
    defense/1/same_core/         numpy-only copy of ``same_defense.core`` (written here)
    defense/1/same_calibration.json   threshold, alpha, shapes, classes, ONNX SHA-256
    same/                        the ensemble: IMAGE -> PROBS, LABEL

The configs themselves are rendered in ``model_configs`` (``ServingSettings``,
``render_configs`` and ``write_configs`` are re-exported here); this module places the files,
bundles the defense code, writes the manifest and reads a repository back.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from .. import core
from ..core.accounts import ACCOUNT_OUTPUT, ACCOUNT_OUTPUT_WIDTH
from ..core.manifest import MANIFEST_NAME, sha256_file
from .model_configs import INSTANCE_KINDS as INSTANCE_KINDS
from .model_configs import ServingSettings, write_configs
from .model_configs import render_configs as render_configs

MANIFEST_VERSION = 1
# The Triton step ships inside the package (package data), so a pip-installed same-build
# writes a complete repository without a checkout.
DEFENSE_STEP_SOURCE = Path(__file__).resolve().parents[1] / "serving" / "triton_step" / "model.py"
ONNX_FILES = {"victim": "victim/1/model.onnx", "reconstructor": "reconstructor/1/model.onnx"}
# A provider's own ONNX victim, kept verbatim beside the served wrapper (victim/1/model.onnx
# adds its preprocessing). Triton loads only version folders, so this file is not served.
PROVIDED_VICTIM_FILE = "victim/provided.onnx"


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
    """Put the current Triton step and core code into ``repository`` (the ONNX stay as built),
    and give the configs the internal output's current width (a repository built before the
    account evidence had three columns declared one)."""
    step = repository / "defense" / "1" / "model.py"
    if not step.exists() or step.resolve() != DEFENSE_STEP_SOURCE.resolve():
        shutil.copyfile(DEFENSE_STEP_SOURCE, step)
    bundle_core(repository)
    for model in ("defense", "same"):
        config = repository / model / "config.pbtxt"
        if config.exists():
            text = config.read_text()
            fixed = re.sub(
                rf'(name: "{ACCOUNT_OUTPUT}"\s*data_type: TYPE_FP32\s*dims: \[ )\d+( \])',
                rf"\g<1>{ACCOUNT_OUTPUT_WIDTH}\g<2>",
                text,
            )
            if fixed != text:
                config.write_text(fixed)


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
