"""``same-client``: classify image files or ``.npy`` arrays through ``same``; show health.

Examples::

    same-client health
    same-client classify digit.png batch.npy --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .api import DEFAULT_URL, SameClient, SameClientError


def load_inputs(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A file as ``[N, *shape]`` float32 in [0, 1]: ``.npy`` arrays or ordinary image files.

    ``.npy`` holds ``[N, C, H, W]``, ``[C, H, W]`` or ``[H, W]``; uint8 arrays are scaled by
    1/255. Image files are converted to the model's channels and resized to its size.
    """
    if not path.exists():
        raise SameClientError(f"{path}: no such file")
    if path.suffix == ".npy":
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
        return np.asarray(array, dtype=np.float32)
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise SameClientError(f"{path}: not an image or .npy file ({exc})") from None
    return (array[None] if channels == 1 else array.transpose(2, 0, 1))[None]


def _classify(args: argparse.Namespace) -> int:
    with SameClient(args.url, args.model, api_key=args.api_key) as client:
        shape = client.input_shape
        rows = []
        for path in args.files:
            images = load_inputs(Path(path), shape)
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
    with SameClient(args.url, args.model, api_key=args.api_key) as client:
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


def main(argv: list[str] | None = None) -> int:
    """Run ``same-client`` with ``argv`` (default: the command line); return the exit status.

    The status is 0 on success, 1 when ``health`` finds the model not ready, and 2 when the
    client fails (the message goes to stderr).
    """
    parser = argparse.ArgumentParser(
        prog="same-client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="Triton gRPC address host:port")
    parser.add_argument("--model", default="same", help="model to call")
    parser.add_argument(
        "--api-key", help="API key for the gateway (default: the SAME_API_KEY environment variable)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    classify = sub.add_parser("classify", help="classify image files or .npy arrays")
    classify.add_argument("files", nargs="+")
    classify.set_defaults(run=_classify)
    sub.add_parser("health", help="server and model health").set_defaults(run=_health)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SameClientError as exc:
        print(f"same-client: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
