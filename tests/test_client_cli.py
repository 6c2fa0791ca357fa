"""``same-client`` (issue 22): images of the wrong size or channel count are refused with the
expected shape (``--resize`` converts on purpose), and ``example-request`` prints a KServe v2
request of the served model's shape that the gateway's HTTP endpoint (curl) accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from same_defense.accounts import KeyStore
from same_defense.client.api import SameClientError
from same_defense.client.cli import example_request, load_inputs
from same_defense.client.cli import main as client_main
from same_defense.core.manifest import manifest_path
from same_defense.gateway.options import AccountOptions

from .provided_victim import build_provided_victim_repository
from .servers import protected_service

SHAPE = (3, 32, 32)


def _png(path: Path, size: tuple[int, int], mode: str) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_wrong_size_or_channels_are_refused_with_the_expected_shape(tmp_path):
    gray = _png(tmp_path / "digit.png", (28, 28), "L")
    with pytest.raises(SameClientError, match=r"28x28 grayscale image.*32x32 RGB \(3x32x32\)"):
        load_inputs(gray, SHAPE)
    with pytest.raises(SameClientError, match="--resize"):
        load_inputs(gray, SHAPE)
    small_rgb = _png(tmp_path / "small.png", (16, 16), "RGB")
    with pytest.raises(SameClientError, match="16x16 colour image"):
        load_inputs(small_rgb, SHAPE)
    rgb_for_gray = _png(tmp_path / "rgb28.png", (28, 28), "RGB")
    with pytest.raises(SameClientError, match="28x28 colour image.*grayscale"):
        load_inputs(rgb_for_gray, (1, 28, 28))


def test_resize_converts_on_purpose_and_right_images_pass(tmp_path):
    gray = _png(tmp_path / "digit.png", (28, 28), "L")
    assert load_inputs(gray, SHAPE, resize=True).shape == (1, *SHAPE)
    right = _png(tmp_path / "right.png", (32, 32), "RGB")
    x = load_inputs(right, SHAPE)
    assert x.shape == (1, *SHAPE) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    rgba = _png(tmp_path / "rgba.png", (32, 32), "RGBA")  # alpha is not a colour channel
    assert load_inputs(rgba, SHAPE).shape == (1, *SHAPE)
    npy = tmp_path / "wrong.npy"
    np.save(npy, np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(SameClientError, match=r"\[1, 28, 28\] per image.*3x32x32"):
        load_inputs(npy, SHAPE)


def test_classify_refusal_is_one_line_and_exits_non_zero(tmp_path, capsys, monkeypatch):
    gray = _png(tmp_path / "digit.png", (28, 28), "L")

    class Served:  # the server's side of the call, enough for the shape check
        input_shape = SHAPE

        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    monkeypatch.setattr("same_defense.client.cli.SameClient", Served)
    assert client_main(["classify", str(gray)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("same-client: error: ") and "3x32x32" in err
    assert "Traceback" not in err


def test_example_request_offline_follows_the_manifest(tmp_path, capsys):
    manifest = Path(manifest_path(tmp_path / "repo"))
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"input_shape": list(SHAPE)}))
    assert client_main(["example-request", "--repository", str(tmp_path / "repo")]) == 0
    captured = capsys.readouterr()
    request = json.loads(captured.out)
    (tensor,) = request["inputs"]
    assert tensor["name"] == "IMAGE" and tensor["datatype"] == "FP32"
    assert tensor["shape"] == [1, *SHAPE] and len(tensor["data"]) == 3 * 32 * 32
    assert "curl" in captured.err  # how to send it, on stderr: stdout stays the JSON
    missing = client_main(["example-request", "--repository", str(tmp_path / "none")])
    assert missing == 2 and "make repository" in capsys.readouterr().err


def test_example_request_of_images():
    images = np.zeros((2, *SHAPE), np.float32)
    request = example_request(images)
    assert request["inputs"][0]["shape"] == [2, *SHAPE]


@pytest.mark.server
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_example_request_is_accepted_by_curl_and_wrong_images_by_nobody(tmp_path, capsys):
    """The issue's path: a provider's 3x32x32 model served behind the gateway; the request
    that example-request prints, POSTed with curl, is answered; a 28x28 grayscale PNG is
    refused by classify with the expected shape."""
    repository = build_provided_victim_repository(tmp_path)
    capsys.readouterr()
    keys = tmp_path / "keys.json"
    key = KeyStore(keys).add("provider-user")
    accounts = AccountOptions(keys_file=keys)
    with protected_service(repository, tmp_path / "triton.log", accounts) as service:
        url = ["--url", service.public_url, "--api-key", key]
        assert client_main([*url, "example-request"]) == 0
        request = tmp_path / "req.json"
        request.write_text(capsys.readouterr().out)
        answer = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {key}"]
            + ["--data", f"@{request}", f"{service.http_url}/v2/models/same/infer"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        body, status = answer.stdout.rsplit("\n", 1)
        assert status == "200", body
        outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
        assert outputs["PROBS"]["shape"] == [1, 5] and outputs["LABEL"]["shape"][0] == 1
        gray = _png(tmp_path / "digit.png", (28, 28), "L")
        assert client_main([*url, "classify", str(gray)]) == 2
        assert "3x32x32" in capsys.readouterr().err
        assert client_main([*url, "classify", "--resize", str(gray)]) == 0
