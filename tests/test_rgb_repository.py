"""The paper's second setting in miniature: a repository built on CIFAR-10-format files (RGB
3x32x32; the small CNN victim, as ResNet-18 learns nothing in seconds on 2 cores), served
behind the gateway, evaluated with the CIFAR-100 transfer set, and found again by every tool
through the data source its manifest records."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from same_defense.accounts import KeyStore
from same_defense.client import SameClient
from same_defense.core.manifest import read_manifest
from same_defense.data import DataSourceError, source_from_manifest, splits_from_manifest
from same_defense.export.build import main as build_main
from same_defense.gateway.options import AccountOptions
from same_defense.runtime.inprocess import read_model_config

from .servers import protected_service
from .tiny_rgb import write_cifar10, write_cifar100

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """``(data root, repository)``: stand-in CIFAR-10/100 files and a tiny build on them."""
    root = tmp_path_factory.mktemp("cifar-data")
    write_cifar10(root)
    write_cifar100(root)
    work = tmp_path_factory.mktemp("cifar-build")
    repository = work / "model_repository"
    build_main(
        ["--data", "cifar10", "--data-root", str(root), "--victim-arch", "cnn3"]
        + ["--preset", "tiny", "--quiet", "--victim-epochs", "6", "--mae-epochs", "3"]
        + ["--shadow-epochs", "1", "--repository", str(repository)]
        + ["--artifacts", str(work / "artifacts"), "--report", str(work / "build.json")]
    )
    return root, repository


def test_the_manifest_records_shape_classes_and_data_source(cifar):
    root, repository = cifar
    manifest = read_manifest(repository)
    assert manifest["input_shape"] == list(SHAPE)
    assert manifest["class_names"][:2] == ["airplane", "automobile"]
    assert manifest["mae"]["patch"] == 8  # the tiny preset's 7 does not divide 32
    assert manifest["victim_test_accuracy"] > 0.3  # a classifier, not chance (0.1)
    data = manifest["data"]
    assert data["name"] == "cifar10" and data["root"] == str(root.resolve())
    assert len(data["fingerprint"]) == 64
    same = read_model_config(repository / "same")
    assert list(same.input[0].dims) == list(SHAPE)
    assert json.loads(same.parameters["class_names"].string_value) == manifest["class_names"]


def test_tools_find_the_data_again_or_say_where_they_were(cifar, tmp_path, monkeypatch):
    root, repository = cifar
    manifest = read_manifest(repository)
    splits = splits_from_manifest(manifest)
    assert splits.test.input_shape == SHAPE and len(splits.calibration) > 0

    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    elsewhere = {**manifest, "data": {**manifest["data"], "root": str(tmp_path / "gone")}}
    with pytest.raises(DataSourceError, match=str(tmp_path / "gone")):
        splits_from_manifest(elsewhere)
    monkeypatch.setenv("SAME_DATA_ROOT", str(moved))
    again = splits_from_manifest(elsewhere)
    np.testing.assert_array_equal(again.test.images, splits.test.images)

    other = tmp_path / "other"
    write_cifar10(other, seed=5)  # same files, different pictures
    monkeypatch.setenv("SAME_DATA_ROOT", str(other))
    with pytest.raises(DataSourceError, match="differ from the data"):
        source_from_manifest(manifest).split()


@pytest.mark.server
def test_rgb_repository_is_served_through_the_gateway(cifar, tmp_path):
    _, repository = cifar
    keys = tmp_path / "keys.json"
    key = KeyStore(keys).add("rgb-user")
    test = splits_from_manifest(read_manifest(repository)).test
    with protected_service(
        repository,
        tmp_path / "triton.log",
        AccountOptions(keys_file=keys),
    ) as service:
        with SameClient(service.public_url, api_key=key) as client:
            assert client.input_shape == SHAPE
            assert client.class_names[3] == "cat"
            prediction = client.classify(test.images[:16])
    assert prediction.probs.shape == (16, 10)
    assert np.allclose(prediction.probs.sum(axis=1), 1, atol=1e-4)


def test_evaluation_runs_on_the_rgb_repository_with_the_cifar100_transfer_set(cifar, tmp_path):
    from same_harness.evaluation.run import main as evaluate
    from same_harness.evaluation.setup import default_attacks

    root, repository = cifar
    assert "knockoff-cifar100" in default_attacks(str(root))
    assert "knockoff-cifar100" not in default_attacks(str(tmp_path))
    out = tmp_path / "reports"
    evaluate(
        ["--repository", str(repository), "--out-dir", str(out), "--budget", "120"]
        + ["--epochs", "1", "--attacks", "knockoff-cifar100", "noise", "--outputs", "probs"]
        + ["--defenses", "same-misinformation", "--workers", "1", "--grpc-check", "0"]
        + ["--no-indist"]
    )
    report = json.loads((out / "evaluation.json").read_text())
    assert {r["attack"] for r in report["records"]} == {"knockoff-cifar100", "noise"}
    assert report["settings"]["transfer_root"] == str(root.resolve())
    assert report["settings"]["clone_architecture"] == "cnn3"  # the victim's own
    for r in report["records"]:
        assert r["queries_used"] == 120 and 0 <= r["clone_accuracy"] <= 1
