"""The repository manifest (``defense/1/same_calibration.json``): read, verify, turn into settings.

The server side calls :func:`load_verified_manifest` when the defense step loads, so a
tampered or replaced ONNX file stops the ensemble from loading instead of serving silently.
"""

from __future__ import annotations

import hashlib
import json
import os

from .accounts import reference_from_manifest
from .decision import DefenseSettings
from .policies import PolicyParams

MANIFEST_NAME = "same_calibration.json"


class ManifestError(RuntimeError):
    """The manifest is missing or does not match the files it describes."""


def sha256_file(path: str) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
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
    """Build :class:`DefenseSettings`; ``overrides`` are string parameters from a config.

    An ``alpha`` other than the calibrated one is refused: the threshold and the account
    references were calibrated for the manifest's ``alpha`` and would silently be wrong.
    """
    overrides = overrides or {}
    try:
        numbers = {
            name: float(overrides[name])
            for name in ("beta", "gamma", "nu", "margin")
            if name in overrides
        }
        words = {k: overrides[k] for k in ("target", "first_response") if k in overrides}
        params = PolicyParams(**numbers, **words)
        threshold = float(overrides.get("threshold", manifest["threshold"]))
        alpha = float(overrides.get("alpha", manifest["alpha"]))
    except ValueError as exc:
        raise ManifestError(f"bad defense parameter in config.pbtxt: {exc}") from None
    if abs(alpha - float(manifest["alpha"])) > 1e-12:
        raise ManifestError(
            f"alpha {alpha} in config.pbtxt differs from the calibrated alpha "
            f"{manifest['alpha']}: the threshold and account references hold for the latter. "
            f"Recalibrate with `same-build --recalibrate --alpha {alpha}` instead."
        )
    accounts = reference_from_manifest(manifest)
    reference = tuple(accounts[0]) if accounts else ()
    return DefenseSettings(
        threshold=threshold, alpha=alpha, policy=policy, params=params, reference=reference
    )
