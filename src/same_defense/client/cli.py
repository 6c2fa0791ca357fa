"""``same-client``: classify images through ``same``, show health, print an HTTP request.

``classify`` sends image files or ``.npy`` arrays; ``example-request`` prints a KServe v2 JSON
request of the served model's shape.

Examples::

    same-client health
    same-client classify digit.png batch.npy --json
    same-client classify photo.jpg --resize     # convert another size on purpose
    same-client example-request > req.json      # then: curl ... --data @req.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..cli_errors import CommandError, add_debug_argument, run_command, wants_debug
from .api import DEFAULT_URL, SameClient, SameClientError

# PIL modes with one colour channel (an alpha channel beside it is not a colour).
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def _describe(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    colour = "grayscale" if channels == 1 else "RGB" if channels == 3 else f"{channels}-channel"
    return f"{height}x{width} {colour} ({channels}x{height}x{width})"


def _load_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise SameClientError(f"{path}: not a readable .npy file ({exc})") from None
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    if array.ndim == len(shape) - 1:
        array = array[None]
    if array.ndim == len(shape):
        array = array[None]
    if tuple(array.shape[1:]) != tuple(shape):
        raise SameClientError(
            f"{path}: arrays of shape {list(array.shape[1:])} per image; the served model takes "
            f"{_describe(shape)}, [N, C, H, W] float in [0, 1] (.npy files are not resized)"
        )
    return np.asarray(array, dtype=np.float32)


def load_inputs(path: Path, shape: tuple[int, ...], resize: bool = False) -> np.ndarray:
    """A file as ``[N, *shape]`` float32 in [0, 1]: ``.npy`` arrays or ordinary image files.

    ``.npy`` holds ``[N, C, H, W]``, ``[C, H, W]`` or ``[H, W]``; uint8 arrays are scaled by
    1/255. An image file must have the model's size and channel count: converting it
    silently would answer for a different image than the caller meant. ``resize`` converts
    it on purpose (channels, then size).
    """
    if not path.exists():
        raise SameClientError(f"{path}: no such file")
    if path.suffix == ".npy":
        return _load_npy(path, shape)
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    try:
        with Image.open(path) as img:
            got_channels = 1 if img.mode in _GRAY_MODES else 3
            if not resize and (img.size != (width, height) or got_channels != channels):
                colour = "grayscale" if got_channels == 1 else "colour"
                raise SameClientError(
                    f"{path}: a {img.size[1]}x{img.size[0]} {colour} image; the served model "
                    f"takes {_describe(shape)}. Pass --resize to convert it (or send an image "
                    "of that size)"
                )
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise SameClientError(f"{path}: not an image or .npy file ({exc})") from None
    return (array[None] if channels == 1 else array.transpose(2, 0, 1))[None]


def _client(args: argparse.Namespace) -> SameClient:
    return SameClient(args.url, args.model, api_key=args.api_key)


def _classify(args: argparse.Namespace) -> int:
    with _client(args) as client:
        shape = client.input_shape
        rows = []
        for path in args.files:
            images = load_inputs(Path(path), shape, args.resize)
            prediction = client.classify(images)
            for i, (label, probs) in enumerate(
                zip(prediction.labels, prediction.probs, strict=True)
            ):
                rows.append(
                    {
                        "file": str(path),
                        "index": i,
                        "label": int(label),
                        "class_name": client.class_name(int(label)),
                        "confidence": float(probs.max()),
                        "probs": probs.round(6).tolist(),
                    }
                )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            label = "refused" if r["label"] < 0 else r["label"]
            if r["class_name"] is not None and r["class_name"] != str(r["label"]):
                label = f"{label} ({r['class_name']})"
            print(f"{r['file']}[{r['index']}]\tlabel={label}\tconfidence={r['confidence']:.3f}")
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.health()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"server {report['url']} (Triton {report['server_version']}): "
            f"live={report['live']} ready={report['ready']}"
        )
        for name, info in sorted(report["models"].items()):
            reason = f" ({info['reason']})" if info["reason"] else ""
            print(f"  {name}: {info['state']}{reason}")
    ok = report["ready"] and report["models"].get(args.model, {}).get("state") == "READY"
    return 0 if ok else 1


def served_shape(args: argparse.Namespace) -> tuple[int, ...]:
    """The per-image shape: from ``--repository``'s manifest offline, else from the server."""
    if args.repository is None:
        with _client(args) as client:
            return client.input_shape
    from ..core.manifest import ManifestError, read_manifest

    try:
        return tuple(int(d) for d in read_manifest(args.repository)["input_shape"])
    except ManifestError as exc:
        raise CommandError(f"--repository {args.repository}: {exc}", status=2) from None


def example_request(images: np.ndarray) -> dict:
    """A KServe v2 JSON inference request for ``images`` ([N, C, H, W] float32)."""
    return {
        "inputs": [
            {
                "name": "IMAGE",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": [round(float(v), 6) for v in images.reshape(-1)],
            }
        ]
    }


def _example_request(args: argparse.Namespace) -> int:
    shape = served_shape(args)
    if args.files:
        images = np.concatenate([load_inputs(Path(f), shape, args.resize) for f in args.files])
    else:  # one mid-grey image: any valid pixels will do to try the endpoint
        images = np.full((1, *shape), 0.5, dtype=np.float32)
    print(json.dumps(example_request(images)))
    print(
        f"same-client: KServe v2 request for {len(images)} image(s) of {_describe(shape)}; "
        f'POST it: curl -H "Authorization: Bearer $SAME_API_KEY" --data @req.json '
        f"http://HOST:8000/v2/models/{args.model}/infer",
        file=sys.stderr,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="same-client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"gRPC address host:port (default: {DEFAULT_URL})"
    )
    parser.add_argument("--model", default="same", help="model to call (default: same)")
    parser.add_argument(
        "--api-key", help="API key for the gateway (default: the SAME_API_KEY environment variable)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_debug_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    classify = sub.add_parser("classify", help="classify image files or .npy arrays")
    classify.add_argument("files", nargs="+")
    classify.set_defaults(run=_classify)
    sub.add_parser("health", help="server and model health").set_defaults(run=_health)
    example = sub.add_parser(
        "example-request",
        help="print a KServe v2 JSON request of the served model's shape (to stdout)",
    )
    example.add_argument("files", nargs="*", help="images or .npy to put in it (default: grey)")
    example.add_argument(
        "--repository",
        type=Path,
        help="read the shape from this built repository's manifest instead of the server",
    )
    example.set_defaults(run=_example_request)
    for command in (classify, example):
        command.add_argument(
            "--resize",
            action="store_true",
            help="convert image files of another size or channel count to the model's "
            "(default: refuse them)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``same-client`` with ``argv`` (default: the command line); return the exit status.

    The status is 0 on success, 1 when ``health`` finds the model not ready, and 2 when the
    client fails (one line on stderr; the traceback with ``--debug``).
    """
    args = _parser().parse_args(argv)
    return run_command("same-client", lambda: args.run(args), wants_debug(argv), status=2)


if __name__ == "__main__":
    raise SystemExit(main())
