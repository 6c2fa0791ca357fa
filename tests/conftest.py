"""Shared fixtures: a tiny but real repository (trained and exported in seconds) and a real
embedded tritonserver serving it over gRPC."""

from __future__ import annotations

from pathlib import Path

import pytest

from same_defense.export.build import main as build_main

from .servers import start_server


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory) -> Path:
    """Tiny MAE, 2-epoch victim on 1,500 images: seconds to build, still a real pipeline."""
    work = tmp_path_factory.mktemp("build")
    repository = work / "model_repository"
    build_main(
        ["--preset", "tiny", "--quiet", "--max-train", "1500", "--victim-epochs", "2"]
        + ["--mae-epochs", "20", "--shadow-epochs", "1", "--repository", str(repository)]
        + ["--artifacts", str(work / "artifacts"), "--report", str(work / "build.json")]
    )
    return repository


@pytest.fixture(scope="session")
def server(tiny_repository, tmp_path_factory):
    srv = start_server(tiny_repository, tmp_path_factory.mktemp("logs") / "triton.log")
    yield srv
    srv.stop()
