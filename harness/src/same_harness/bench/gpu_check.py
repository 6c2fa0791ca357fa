"""``make gpu-check``: the GPU path end to end, on a machine with an NVIDIA GPU.

Steps (each recorded in ``reports/gpu.json`` with its command, exit status and time):

1. ``cuda``: torch and onnxruntime both see CUDA (else stop here with the reason);
2. ``build``: ``same-build --preset paper --device cuda`` into ``--workdir`` (the paper's
   MAE: patch 2, 12 + 4 blocks of width 192; ``--mae-epochs`` etc. shorten it);
3. ``parity``: the built ONNX graphs on CUDAExecutionProvider against the CPU provider on the
   test images (largest output difference, and whether every flag decision agrees);
4. ``bench``: ``make bench`` serving the build with ``--set instance_kind=KIND_GPU`` (the ONNX
   models' instance groups on the GPU; the defense step stays on the CPU), short grid;
5. ``evaluate``: a short ``make evaluate`` (``--quick``) of the paper-preset build.

Nothing here has run on a GPU yet: no GPU was available where it was written (README, GPU
path). Its CPU-only parts (arguments, the configs it serves, the error without CUDA) are
tested in tests/test_gpu_path.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from same_defense.core.layout import ONNX_FILES
from same_defense.core.manifest import read_manifest
from same_defense.export.model_configs import ServingSettings, render_configs

GPU_OVERRIDE = "instance_kind=KIND_GPU"


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", type=Path, default=Path("artifacts/gpu"))
    p.add_argument("--preset", default="paper", help="MAE preset built on the GPU")
    p.add_argument("--device", default="cuda", help="torch and onnxruntime device (cuda:N)")
    p.add_argument("--mae-epochs", type=int, help="shorter than the preset's (paper: 500)")
    p.add_argument("--victim-epochs", type=int)
    p.add_argument("--shadow-epochs", type=int)
    p.add_argument("--skip-build", action="store_true", help="reuse the build in --workdir")
    p.add_argument(
        "--bench-args",
        default="--batch-sizes 1 64 --concurrency 1 16 --duration 3 --no-resnet18",
        help="extra `make bench` arguments (short grid by default)",
    )
    p.add_argument("--evaluate-args", default="--quick", help="extra `make evaluate` arguments")
    p.add_argument("--out", type=Path, default=Path("reports/gpu.json"))
    return p.parse_args(argv)


def repository_of(args: argparse.Namespace) -> Path:
    return args.workdir / "model_repository"


def plan(args: argparse.Namespace) -> list[Step]:
    """The commands the check runs after the CUDA check, in order (parity runs in-process)."""
    py = sys.executable
    repo = repository_of(args)
    build = [
        py,
        "-m",
        "same_defense.export.build",
        "--preset",
        args.preset,
        "--device",
        args.device,
        "--repository",
        str(repo),
        "--artifacts",
        str(args.workdir / "artifacts"),
        "--report",
        str(args.workdir / "build.json"),
        "--quiet",
        "--force",  # a rerun rebuilds its own work folder (--skip-build reuses it)
    ]
    for flag in ("mae_epochs", "victim_epochs", "shadow_epochs"):
        if getattr(args, flag):
            build += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    bench = [
        py,
        "-m",
        "same_harness.bench.run",
        "--repository",
        str(repo),
        "--set",
        GPU_OVERRIDE,
        "--output",
        str(args.workdir / "bench.json"),
        *args.bench_args.split(),
    ]
    evaluate = [
        py,
        "-m",
        "same_harness.evaluation.run",
        "--repository",
        str(repo),
        "--out-dir",
        str(args.workdir / "evaluation"),
        *args.evaluate_args.split(),
    ]
    steps = [] if args.skip_build else [Step("build", build)]
    return [*steps, Step("bench", bench), Step("evaluate", evaluate)]


def gpu_configs(manifest: dict) -> dict[str, str]:
    """The configs ``bench`` serves: the repository's settings with KIND_GPU instances."""
    base = ServingSettings(
        input_shape=tuple(manifest["input_shape"]),
        num_classes=len(manifest["class_names"]),
        class_names=tuple(manifest["class_names"]),
    )
    return render_configs(replace(base, instance_kind="KIND_GPU"))


def check_cuda(device: str) -> dict:
    """torch and onnxruntime versions and providers; raises with the reason if either side
    has no CUDA (the error a CPU-only machine gets)."""
    import onnxruntime as ort
    import torch

    from same_defense.runtime.inprocess import providers_for
    from same_defense.train.device import resolve_device

    resolve_device(device)  # DeviceUnavailable: CPU-only torch or no GPU
    providers_for(device)  # ValueError: onnxruntime without CUDAExecutionProvider
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(torch.device(device)),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }


def parity(repository: Path, device: str, limit: int = 2048) -> dict:
    """Largest |CUDA - CPU| per graph output, and whether the flags agree, on test images."""
    from same_defense.core import defend
    from same_defense.core.manifest import settings_from_manifest
    from same_defense.data import splits_from_manifest
    from same_defense.runtime.inprocess import GraphRunner

    manifest = read_manifest(repository)
    images = splits_from_manifest(manifest).test.images[:limit]
    paths = (repository / ONNX_FILES["victim"], repository / ONNX_FILES["reconstructor"])
    cpu = GraphRunner(*paths, device="cpu").run(images)
    gpu = GraphRunner(*paths, device=device).run(images)
    settings = settings_from_manifest(manifest, "monitor")
    flags = [defend(o.logits, o.recon_error, o.shadow_logits, settings).flagged for o in (cpu, gpu)]
    fields = ("logits", "recon_error", "shadow_logits", "input_stats")
    return {
        "images": int(len(images)),
        "max_abs_diff": {f: float(np.abs(getattr(cpu, f) - getattr(gpu, f)).max()) for f in fields},
        "flag_agreement": float((flags[0] == flags[1]).mean()),
    }


def run_step(step: Step) -> dict:
    print(f"== {step.name}: {' '.join(step.argv)}", flush=True)
    start = time.perf_counter()
    rc = subprocess.run(step.argv).returncode
    return {"command": step.argv, "returncode": rc, "seconds": round(time.perf_counter() - start)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict = {"device": args.device, "preset": args.preset, "steps": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    try:
        report["cuda"] = check_cuda(args.device)
    except (RuntimeError, ValueError) as exc:
        report["error"] = str(exc)
        save()
        print(f"gpu-check: no CUDA here: {exc}", file=sys.stderr)
        return 2
    steps = plan(args)
    for step in steps:
        if step.name == "bench":  # parity first: no point serving graphs that disagree
            report["parity"] = parity(repository_of(args), args.device)
            report["served_configs"] = gpu_configs(read_manifest(repository_of(args)))
            save()
        report["steps"][step.name] = run_step(step)
        save()
        if report["steps"][step.name]["returncode"]:
            print(f"gpu-check: {step.name} failed", file=sys.stderr)
            return 1
    print(f"== wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
