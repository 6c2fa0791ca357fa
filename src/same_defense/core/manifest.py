"""The repository manifest (``defense/1/same_calibration.json``): read, verify, turn into settings.

The server side calls :func:`load_verified_manifest` when the defense step loads, so a
tampered or replaced ONNX file stops the ensemble from loading instead of serving silently.
"""

from __future__ import annotations

import hashlib
import json
import os

from .decision import DefenseSettings
from .policies import PolicyParams

MANIFEST_NAME = "same_calibration.json"


class ManifestError(RuntimeError):
    """The manifest is missing or does not match the files it describes."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_verified_manifest(repository_root: str, manifest_path: str) -> dict:
    """Read the manifest and check the SHA-256 of every ONNX file it lists."""
    if not os.path.exists(manifest_path):
        raise ManifestError(f"{manifest_path} is missing: rebuild the repository")
    with open(manifest_path) as f:
        manifest = json.load(f)
    for rel, expected in manifest.get("onnx_sha256", {}).items():
        path = os.path.join(repository_root, rel)
        if not os.path.exists(path):
            raise ManifestError(f"{rel} is missing from the repository at {repository_root}")
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(
                f"{rel} does not match its calibration: SHA-256 {actual[:12]}... expected "
                f"{expected[:12]}... (file replaced or tampered; rebuild or restore it)"
            )
    return manifest


def settings_from_manifest(
    manifest: dict, policy: str, overrides: dict[str, str] | None = None
) -> DefenseSettings:
    """Build :class:`DefenseSettings`; ``overrides`` are string parameters from a config."""
    overrides = overrides or {}
    params = PolicyParams(
        **{
            name: float(overrides[name])
            for name in ("beta", "gamma", "nu", "margin")
            if name in overrides
        }
    )
    threshold = float(overrides.get("threshold", manifest["threshold"]))
    alpha = float(overrides.get("alpha", manifest["alpha"]))
    return DefenseSettings(threshold=threshold, alpha=alpha, policy=policy, params=params)
