"""A provider's first build (issue 22): checks that stop a wrong build in seconds with the fix
named, ``same-build --check``, the refusal to replace a built repository, every default in
``--help``, and one error style for every command line (one line, no traceback, --debug)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from same_defense.accounts.cli import main as accounts_main
from same_defense.cli_errors import MAX_MESSAGE_CHARS, CommandError, run_command, short_message
from same_defense.client.cli import main as client_main
from same_defense.core.manifest import manifest_path
from same_defense.deploy.cli import main as deploy_main
from same_defense.export.build import main as build_main
from same_defense.export.build import parse_args, refuse_overwrite
from same_defense.export.build_plan import format_seconds
from same_defense.export.victim.arguments import shadow_reason
from same_defense.export.victim.checks import output_kind_problem
from same_defense.gateway.cli import main as gateway_main
from same_defense.gateway.http.errors import http_message
from same_defense.ports import free_port
from same_defense.serving.cli import main as serve_main

from .provided_victim import (
    PREPROCESSING_ARGS,
    ProviderNet,
    export_provider_onnx,
    train_provider_net,
)
from .provided_victim import build_args as debug_build_args
from .tiny_rgb import write_image_folder


def build_args(work: Path, data_root: Path) -> list[str]:
    """The tiny build of tests/provided_victim.py without --debug: the user's error style."""
    return [a for a in debug_build_args(work, data_root) if a != "--debug"]


def without(args: list[str], flag: str) -> list[str]:
    """``args`` less ``flag`` and its value."""
    i = args.index(flag)
    return args[:i] + args[i + 2 :]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def provided(tmp_path_factory) -> Path:
    """The provider's softmax ONNX model (NHWC, 0-255, BGR, mean/std)."""
    torch.set_num_threads(1)
    return export_provider_onnx(train_provider_net(), tmp_path_factory.mktemp("onnx") / "p.onnx")


def refused(capsys, argv: list[str]) -> str:
    """Run same-build, expect a refusal (SystemExit 1) and return its stderr."""
    with pytest.raises(SystemExit) as exc:
        build_main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("same-build: error:") == 1
    return err


# ------------------------------------------------------------ checks that stop a build


def test_softmax_model_without_victim_output_probs_stops_in_seconds(
    provided, data_root, tmp_path, capsys
):
    argv = [*build_args(tmp_path, data_root), "--victim-onnx", str(provided)]
    started = time.monotonic()
    err = refused(capsys, [*argv, *without(PREPROCESSING_ARGS, "--victim-output")])
    assert time.monotonic() - started < 30
    assert "answers probabilities" in err and "pass --victim-output probs" in err
    assert not (tmp_path / "model_repository").exists()


def test_logits_model_declared_probs_is_refused(data_root, tmp_path, capsys):
    torch.manual_seed(0)
    logits_model = export_provider_onnx(ProviderNet(softmax=False), tmp_path / "logits.onnx")
    argv = [*build_args(tmp_path, data_root), "--victim-onnx", str(logits_model)]
    err = refused(capsys, [*argv, *PREPROCESSING_ARGS])
    assert "do not sum to 1" in err and "leave out --victim-output probs" in err


def test_output_kind_problem():
    probs = np.full((4, 5), 0.2, np.float32)
    assert "--victim-output probs" in output_kind_problem(probs, "logits")
    assert output_kind_problem(np.log(probs), "probs") is None
    logits = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    assert output_kind_problem(logits, "logits") is None
    # Served as probs, logits become log(max(logit, floor)): their rows do not sum to 1.
    served = np.log(np.maximum(logits, np.finfo(np.float32).tiny))
    assert "leave out --victim-output probs" in output_kind_problem(served, "probs")


def test_missing_scale_stops_with_the_scale_that_works(provided, data_root, tmp_path, capsys):
    argv = [*build_args(tmp_path, data_root), "--victim-onnx", str(provided)]
    started = time.monotonic()
    err = refused(capsys, [*argv, *without(PREPROCESSING_ARGS, "--victim-scale")])
    assert time.monotonic() - started < 30
    assert "near chance" in err
    assert "With --victim-scale 255 its accuracy is" in err
    assert "--accept-low-accuracy" in err
    assert len(err.strip()) <= len("same-build: error: ") + MAX_MESSAGE_CHARS


def test_check_prints_the_plan_and_writes_nothing(provided, data_root, tmp_path, capsys):
    argv = [*build_args(tmp_path, data_root), "--victim-onnx", str(provided), "--check"]
    started = time.monotonic()
    assert build_main([*argv, *PREPROCESSING_ARGS]) == 0
    assert time.monotonic() - started < 30
    out = capsys.readouterr().out
    assert "== plan" in out
    for stage in ("data", "victim", "mae", "shadow", "onnx", "calibrate", "repository"):
        assert f"   {stage} " in out, stage
    assert "shadow: cnn3-small (auto: the cheapest shadow" in out
    assert "test accuracy" in out and "~ " in out
    assert str((tmp_path / "model_repository").resolve()) in out
    assert "check passed: nothing was written" in out
    assert not (tmp_path / "model_repository").exists()
    assert not (tmp_path / "artifacts").exists()
    assert not (tmp_path / "build.json").exists()


def test_check_runs_the_same_refusals(provided, data_root, tmp_path, capsys):
    argv = [*build_args(tmp_path, data_root), "--victim-onnx", str(provided), "--check"]
    err = refused(capsys, [*argv, *without(PREPROCESSING_ARGS, "--victim-output")])
    assert "--victim-output probs" in err


def test_a_build_prints_each_stage_with_its_estimate(provided, data_root, tmp_path, capsys):
    argv = [*build_args(tmp_path, data_root), "--victim-onnx", str(provided)]
    assert build_main([*argv, *PREPROCESSING_ARGS]) == 0  # --quiet is in build_args
    out = capsys.readouterr().out
    for stage in ("mae", "shadow", "onnx", "calibrate"):
        assert f"== {stage} (~ " in out, stage
    report = json.loads((tmp_path / "build.json").read_text())
    assert report["shadow_architecture"] == "cnn3-small" and report["estimated_s"] > 0
    # A second build into the same folder is refused before anything runs ...
    err = refused(capsys, [*argv, *PREPROCESSING_ARGS])
    assert "already holds a built repository" in err and "--force" in err


def test_refuse_overwrite_unless_force(tmp_path):
    repository = tmp_path / "model_repository"
    (repository / "same").mkdir(parents=True)
    (repository / "same" / "config.pbtxt").write_text("")  # configs alone: a fresh checkout
    refuse_overwrite(parse_args(["--repository", str(repository)]))
    manifest = Path(manifest_path(repository))
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    with pytest.raises(CommandError, match="--force"):
        refuse_overwrite(parse_args(["--repository", str(repository)]))
    refuse_overwrite(parse_args(["--repository", str(repository), "--force"]))


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit) as exc:
        build_main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("model_repository)", "artifacts)", "reports/build.json)", "cpu-lite)"):
        assert f"(default: {default}" in text, default
    assert "--check" in text and "--force" in text and "--accept-low-accuracy" in text


def test_shadow_reason_says_why():
    assert "cheapest" in shadow_reason("auto", "provided", (3, 32, 32), "cpu-lite")
    assert shadow_reason("resnet18", "provided", (3, 32, 32)) == "--shadow-arch"
    assert "too small" in shadow_reason("auto", "provided", (3, 6, 6))


def test_format_seconds():
    assert format_seconds(None) == "-"
    assert format_seconds(0.2) == "< 1 s"
    assert format_seconds(42) == "42 s"
    assert format_seconds(190) == "3 min 10 s"
    assert format_seconds(3720) == "1 h 02 min"


# ------------------------------------------------------------ one error style


def test_debug_shows_the_exception(provided, data_root, tmp_path):
    argv = [*build_args(tmp_path, data_root), "--victim-onnx", str(provided), "--debug"]
    with pytest.raises(ValueError, match="--victim-output probs"):
        build_main([*argv, *without(PREPROCESSING_ARGS, "--victim-output")])


def test_run_command_style(capsys):
    def boom() -> int:
        raise TypeError("a bug")

    assert run_command("same-x", boom, debug=False) == 1
    err = capsys.readouterr().err
    assert "same-x: error: unexpected TypeError: a bug" in err and "--debug" in err
    assert "Traceback" not in err

    def refusal() -> int:
        raise CommandError("no such thing: pass --thing", status=3)

    assert run_command("same-x", refusal, debug=False) == 3
    assert capsys.readouterr().err == "same-x: error: no such thing: pass --thing\n"
    with pytest.raises(CommandError):
        run_command("same-x", refusal, debug=True)
    assert short_message(ValueError("a\n  b")) == "a b"
    assert len(short_message(ValueError("x" * 5000))) == MAX_MESSAGE_CHARS


def _one_line_refusal(capsys, status: int, expected: int = 1) -> str:
    assert status == expected
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") <= 1, err
    return err


def test_serve_without_a_repository_names_both_fixes(tmp_path, capsys):
    err = _one_line_refusal(capsys, serve_main(["--repository", str(tmp_path / "none")]))
    assert "--repository" in err and "make repository" in err


def test_client_that_cannot_reach_the_server_names_url(capsys):
    status = client_main(["--url", f"127.0.0.1:{free_port()}", "health"])
    err = _one_line_refusal(capsys, status, expected=2)
    assert "cannot reach" in err and "--url" in err


def test_deploy_accounts_gateway_refusals_are_one_line(tmp_path, capsys):
    err = _one_line_refusal(capsys, deploy_main(["--repository", str(tmp_path), "--check"]))
    assert "same-deploy: error:" in err and "make repository" in err
    keys = tmp_path / "keys.json"
    keys.write_text("not json")
    err = _one_line_refusal(capsys, accounts_main(["--keys", str(keys), "list"]))
    assert "same-accounts: error:" in err
    manifest = tmp_path / "broken.json"
    manifest.write_text("{")
    argv = ["--manifest", str(manifest), "--listen", f"127.0.0.1:{free_port()}", "--no-http"]
    err = _one_line_refusal(capsys, gateway_main(argv))
    assert "same-gateway: error:" in err


def test_http_errors_speak_of_headers():
    grpc_text = "missing API key: send metadata 'authorization: Bearer <key>'"
    assert "header 'Authorization: Bearer <key>'" in http_message(grpc_text)
    triton = (
        "unexpected shape for input 'IMAGE' for model 'same'. Expected [-1,3,32,32], got "
        "[1,1,28,28]. NOTE: Setting a non-zero max_batch_size in the model config requires a "
        "batch dimension to be prepended to each input shape."
    )
    message = http_message(triton)
    assert "max_batch_size" not in message and "Expected [-1,3,32,32]" in message
    assert "same-client example-request" in message
