"""``same-deploy`` (``python -m same_defense.deploy``): write ``deploy/k8s/*.yaml``.

    same-deploy                           # the committed manifests (default settings)
    same-deploy --check                   # exit 1 if deploy/ differs from a fresh render
    same-deploy --out my-k8s --repository model_repository --gpu --namespace prod \\
        --gateway-image reg/same-gateway:1.2 --repository-image reg/same-repo:1.2

``--repository`` takes the input shape and class names from a built repository's manifest
(any data set) and the calibrated FPR the alerts compare the flag rate with; without it the
defaults match the tracked MNIST configs. The Grafana dashboard and the PrometheusRule go to
``--monitoring-out`` (deploy/monitoring/).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..cli_errors import add_debug_argument, run_command, wants_debug
from .observability import render_monitoring
from .render import render, to_yaml
from .settings import DeploySettings


def render_files(settings: DeploySettings) -> dict[str, str]:
    return {name: to_yaml(objects) for name, objects in render(settings).items()}


def _stale(files: dict[str, str], out: Path, pattern: str) -> list[str]:
    """Files under ``out`` that differ from ``files``, or are missing, or are extra."""
    stale = [n for n, t in files.items() if not (out / n).exists() or (out / n).read_text() != t]
    return stale + sorted({p.name for p in out.glob(pattern)} - set(files))


def settings_from_args(args: argparse.Namespace) -> DeploySettings:
    s = DeploySettings(namespace=args.namespace, gpu=args.gpu, redis_url=args.redis_url)
    if args.repository is not None:
        from ..core.manifest import read_manifest
        from ..export.model_configs import ServingSettings

        manifest = read_manifest(args.repository)
        serving = ServingSettings(
            input_shape=tuple(manifest["input_shape"]),
            num_classes=len(manifest["class_names"]),
            class_names=tuple(manifest["class_names"]),
        )
        s = replace(s, serving=serving)
        fpr = manifest.get("target_fpr", (manifest.get("calibration") or {}).get("target_fpr"))
        if fpr:
            s = replace(s, target_fpr=float(fpr))
    for field in ("triton_image", "gateway_image", "repository_image"):
        if getattr(args, field):
            s = replace(s, **{field: getattr(args, field)})
    return s


def main(argv: list[str] | None = None) -> int:
    """Run ``same-deploy``; a refusal is one line on stderr (the traceback with --debug)."""
    return run_command("same-deploy", lambda: _run(argv), wants_debug(argv))


def _run(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="same-deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("deploy/k8s"))
    p.add_argument(
        "--monitoring-out",
        type=Path,
        help="Grafana dashboard and PrometheusRule alerts (default: deploy/monitoring beside "
        "an --out named k8s, else OUT/monitoring)",
    )
    p.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    p.add_argument("--repository", type=Path, help="take shapes and classes from its manifest")
    p.add_argument("--namespace", default=DeploySettings.namespace)
    p.add_argument("--gpu", action="store_true", help="one GPU per Triton pod, KIND_GPU models")
    p.add_argument("--redis-url", help="an existing Redis (no StatefulSet rendered)")
    p.add_argument("--triton-image")
    p.add_argument("--gateway-image")
    p.add_argument("--repository-image")
    add_debug_argument(p)
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    if args.monitoring_out is None:
        base = args.out.parent if args.out.name == "k8s" else args.out
        args.monitoring_out = base / "monitoring"
    outputs = [
        (args.out, render_files(settings), "*.yaml"),
        (args.monitoring_out, render_monitoring(settings), "*.*"),
    ]
    if args.check:
        stale = [f"{out}/{n}" for out, files, glob in outputs for n in _stale(files, out, glob)]
        if stale:
            print(f"same-deploy: stale: {', '.join(stale)}; run same-deploy", file=sys.stderr)
            return 1
        count = sum(len(files) for _, files, _ in outputs)
        print(
            f"same-deploy: {args.out} and {args.monitoring_out} match a fresh render "
            f"({count} files)"
        )
        return 0
    for out, files, _ in outputs:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
        print(f"same-deploy: wrote {len(files)} files to {out}")
    return 0
