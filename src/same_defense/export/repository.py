"""Write the Triton model repository: configs, ONNX graphs, the defense code and its manifest.

The layout is the repository contract (:mod:`same_defense.core.layout`); the configs are
rendered in :mod:`.model_configs`. This module places the files, bundles the defense code and
writes the manifest (:mod:`same_defense.core.manifest` reads it back).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from .. import core
from ..core.accounts import ACCOUNT_OUTPUT_WIDTH
from ..core.layout import (
    ACCOUNT_OUTPUT,
    CONFIG_NAME,
    CORE_COPY_DIR,
    DEFENSE,
    DEFENSE_STEP_FILE,
    ENSEMBLE,
    ONNX_FILES,
    PROVIDED_VICTIM_FILE,
)
from ..core.manifest import manifest_path, sha256_file
from .model_configs import ServingSettings, write_configs

MANIFEST_VERSION = 1
# The Triton step ships inside the package (package data), so a pip-installed same-build
# writes a complete repository without a checkout.
DEFENSE_STEP_SOURCE = Path(__file__).resolve().parents[1] / "serving" / "triton_step" / "model.py"


def core_source_dir() -> Path:
    return Path(core.__file__).parent


def bundle_core(repository: Path) -> Path:
    """Copy the numpy-only defense code next to the Triton step (see ``same_defense.core``)."""
    target = repository / CORE_COPY_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(core_source_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def refresh_defense_code(repository: Path) -> None:
    """Put the current Triton step and core code into ``repository`` (the ONNX stay as built),
    and give the configs the internal output's current width (a repository built before the
    account evidence had three columns declared one)."""
    step = repository / DEFENSE_STEP_FILE
    if not step.exists() or step.resolve() != DEFENSE_STEP_SOURCE.resolve():
        shutil.copyfile(DEFENSE_STEP_SOURCE, step)
    bundle_core(repository)
    for model in (DEFENSE, ENSEMBLE):
        config = repository / model / CONFIG_NAME
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
    return write_manifest(repository, manifest)


def write_manifest(repository: Path, manifest: dict) -> Path:
    """Write ``manifest`` where :func:`~same_defense.core.manifest.read_manifest` finds it."""
    path = Path(manifest_path(repository))
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
