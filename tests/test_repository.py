"""The model repository: every config parses as Triton's ModelConfig, the committed default
matches what the writer renders, and the bundled defense code is the package's code."""

import filecmp

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from same_defense.core import POLICY_NAMES
from same_defense.core.layout import CORE_COPY_DIR
from same_defense.core.manifest import read_manifest
from same_defense.export.model_configs import ServingSettings, render_configs
from same_defense.export.repository import core_source_dir

from .servers import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "model_repository"
MODELS = ("victim", "reconstructor", "defense", "same")


def _parse(text: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)  # raises on any unknown field or typo
    return config


@pytest.mark.parametrize("name", MODELS)
def test_committed_config_parses_and_is_explicit(name):
    config = _parse((COMMITTED / name / "config.pbtxt").read_text())
    assert config.name == name
    assert config.max_batch_size > 0
    assert config.input and config.output  # explicit: no reliance on auto-complete
    if name != "same":
        assert config.dynamic_batching.max_queue_delay_microseconds >= 0
        assert config.HasField("dynamic_batching")


def test_committed_configs_are_what_the_writer_renders():
    rendered = render_configs(ServingSettings())
    for name in MODELS:
        assert (COMMITTED / name / "config.pbtxt").read_text() == rendered[name], name


def test_ensemble_wires_every_tensor():
    ensemble = _parse((COMMITTED / "same" / "config.pbtxt").read_text())
    steps = {s.model_name: s for s in ensemble.ensemble_scheduling.step}
    assert set(steps) == {"victim", "reconstructor", "defense"}
    produced = {"IMAGE"}
    for name in ("victim", "reconstructor"):
        produced |= set(steps[name].output_map.values())
    assert set(steps["defense"].input_map.values()) <= produced
    assert set(steps["defense"].output_map.values()) == {o.name for o in ensemble.output}
    for name in ("victim", "reconstructor", "defense"):
        model = _parse((COMMITTED / name / "config.pbtxt").read_text())
        assert set(steps[name].input_map) == {i.name for i in model.input}
        assert set(steps[name].output_map) <= {o.name for o in model.output}


def test_defense_policy_is_a_known_one():
    config = _parse((COMMITTED / "defense" / "config.pbtxt").read_text())
    assert config.parameters["policy"].string_value in POLICY_NAMES


def test_built_repository_bundles_the_package_core_verbatim(tiny_repository):
    bundled = tiny_repository / CORE_COPY_DIR
    source = core_source_dir()
    names = sorted(p.name for p in source.glob("*.py"))
    assert names == sorted(p.name for p in bundled.glob("*.py"))
    match, mismatch, errors = filecmp.cmpfiles(source, bundled, names, shallow=False)
    assert not mismatch and not errors
    manifest = read_manifest(tiny_repository)
    assert manifest["threshold"] > 0 and manifest["input_shape"] == [1, 28, 28]
    assert set(manifest["onnx_sha256"]) == {"victim/1/model.onnx", "reconstructor/1/model.onnx"}
