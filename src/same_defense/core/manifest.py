"""The repository manifest (``defense/1/same_calibration.json``): read, verify, turn into settings.

The one reader of the manifest. The server side calls :func:`load_verified_manifest` when the
defense step loads, so a tampered or replaced ONNX file stops the ensemble from loading
instead of serving silently; tools that only need its figures call :func:`read_manifest`.
"""

from __future__ import annotations

import hashlib
import json
import os

from .accounts import reference_from_manifest
from .decision import DefenseSettings
from .layout import MANIFEST_FILE, repository_path
from .policies import PolicyParams


class ManifestError(RuntimeError):
    """The manifest is missing or does not match the files it describes."""


def sha256_file(path: str) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(repository: str | os.PathLike[str]) -> str:
    """Where the manifest of ``repository`` lives."""
    return repository_path(repository, MANIFEST_FILE)


def is_built(repository: str | os.PathLike[str]) -> bool:
    """Whether ``repository`` has a manifest: ``same-build`` writes it last."""
    return os.path.exists(manifest_path(repository))


def read_manifest_file(path: str | os.PathLike[str]) -> dict:
    """The manifest at ``path`` (a copy outside its repository, as a gateway pod mounts it)."""
    if not os.path.exists(path):
        raise ManifestError(f"{path} is missing: build the repository first (make repository)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path} is not a readable manifest ({exc}): rebuild it") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} is not a manifest (a JSON object): rebuild it")
    return manifest


def read_manifest(repository: str | os.PathLike[str]) -> dict:
    """The manifest of ``repository``, unverified: for tools that read its figures."""
    return read_manifest_file(manifest_path(repository))


def load_verified_manifest(repository: str | os.PathLike[str]) -> dict:
    """The manifest of ``repository``, after checking the SHA-256 of every file it lists."""
    manifest = read_manifest(repository)
    for rel, expected in manifest.get("onnx_sha256", {}).items():
        path = repository_path(repository, rel)
        if not os.path.exists(path):
            raise ManifestError(f"{rel} is missing from the repository at {repository}")
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
