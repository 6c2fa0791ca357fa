"""What every evaluation job shares: the run's settings, the per-process context (data
splits, cached graphs, defenses), the attack factory and the detectors' scores.

A :class:`Context` is built once per process (:func:`context` caches it for worker
processes) and passed to the jobs as a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from same_defense.core.decision import DEFAULT_ALPHA
from same_defense.core.score import rescaled_alpha

from ..attacks import OUTPUT_TYPES, Attack, CloneConfig, clone_architecture, predict
from .metrics import answer_accuracy

ATTACKS = ("knockoff-digits8x8", "knockoff-natural", "jbda", "dfme", "noise")
# Added to the default attacks when its files are found (the paper's CIFAR-10 setting).
LOCAL_ATTACKS = ("knockoff-cifar100",)
EXTRA_ATTACKS = (
    "knockoff-digits8x8-adaptive",
    "knockoff-natural-adaptive",
    "knockoff-fonts",
    "knockoff-strokes",
    "knockoff-fonts-blur",
    "knockoff-unlabelled",
)
INDIST = "indist"  # the adaptive attacker with in-distribution data (its own section)
CURVE_DEFENSES = ("none", "same-misinformation")
# Served mix, reconstruction error only, KL only, and the authors' a = 0.99 on [-1, 1] pixels.
ALPHAS = (DEFAULT_ALPHA, 1.0, 0.0, rescaled_alpha(DEFAULT_ALPHA, 2.0))
JBDA_SEEDS = 150


@dataclass(frozen=True)
class EvalConfig:
    repository: str = "model_repository"
    out_dir: str = "reports"
    budget: int = 4000
    clone: CloneConfig = field(default_factory=CloneConfig)
    attacks: tuple[str, ...] = ATTACKS
    transfer_root: str | None = None  # local transfer sets (CIFAR-100); see default_attacks
    defenses: tuple[str, ...] = ()  # empty: all
    output_types: tuple[str, ...] = OUTPUT_TYPES
    workers: int = 2
    seed: int = 0
    grpc_check: int = 256  # queries per query source sent through the live endpoint; 0 = skip
    indist: bool = True
    curves: bool = True
    quick: bool = False

    def checkpoints(self) -> tuple[int, ...]:
        return tuple(c for c in (self.budget // 4, self.budget // 2) if c > 0)


class Context:
    """What one worker needs: data splits, cached graphs, defenses, benign answers."""

    def __init__(self, config: EvalConfig) -> None:
        import torch

        from same_defense.core.layout import ONNX_FILES
        from same_defense.core.manifest import load_verified_manifest, settings_from_manifest
        from same_defense.core.score import same_score
        from same_defense.data import splits_from_manifest
        from same_defense.runtime.inprocess import GraphRunner

        from .defenses import DEFENSE_NAMES, CachedGraphs, build_defenses

        torch.set_num_threads(1)
        repo = Path(config.repository)
        self.config = config
        self.manifest = load_verified_manifest(repo)
        self.splits = splits_from_manifest(self.manifest)
        self.shape = tuple(self.manifest["input_shape"])
        self.num_classes = len(self.manifest["class_names"])
        self.graphs = CachedGraphs(
            GraphRunner(repo / ONNX_FILES["victim"], repo / ONNX_FILES["reconstructor"], 1)
        )
        # The response policy comes from each defense; threshold, a and parameters from the
        # manifest as the server reads them.
        self.settings = settings_from_manifest(self.manifest, "monitor")
        self.benign = self.graphs.run(self.splits.test.images)
        self.calibration = self.graphs.run(self.splits.calibration.images)
        self.victim_test_labels = self.benign.logits.argmax(axis=1)
        calibration_scores = same_score(
            self.calibration.recon_error,
            self.calibration.logits,
            self.calibration.shadow_logits,
            self.settings.alpha,
        )
        defenses = build_defenses(
            self.settings, self.calibration.logits, self.manifest["target_fpr"], calibration_scores
        )
        chosen = config.defenses or DEFENSE_NAMES
        self.defenses = {name: defenses[name] for name in chosen}

    def trainer(self):
        from ..attacks import CloneTrainer

        return CloneTrainer(
            self.shape, self.num_classes, clone_architecture(self.manifest), self.config.clone
        )

    def clone_accuracy(self, model) -> float:
        return answer_accuracy(predict(model, self.splits.test.images), self.splits.test.labels)

    def clone_metrics(self, model) -> dict[str, float]:
        """Accuracy and fidelity (agreement with the victim) of a clone on the test split."""
        from .metrics import clone_metrics

        test = self.splits.test
        return clone_metrics(predict(model, test.images), self.victim_test_labels, test.labels)

    def jbda_seeds(self) -> np.ndarray:
        """150 labelled-class-balanced images from the calibration split: in-distribution data
        the thief holds, disjoint from the victim's training and test data."""
        return self.jbda_seed_set()[0]

    def jbda_seed_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The JBDA seeds and their labels (the thief holds both)."""
        cal = self.splits.calibration
        per_class = max(1, JBDA_SEEDS // self.num_classes)
        index = np.sort(
            np.concatenate(
                [np.flatnonzero(cal.labels == c)[:per_class] for c in range(self.num_classes)]
            )
        )
        return cal.images[index], cal.labels[index]


_CACHE: dict[EvalConfig, Context] = {}


def context(config: EvalConfig) -> Context:
    """This process's context for ``config``: built once (seconds), reused by every job a
    worker process runs."""
    if config not in _CACHE:
        _CACHE.clear()  # one run's context at a time: they hold every graph output
        _CACHE[config] = Context(config)
    return _CACHE[config]


def make_attack(name: str, ctx: Context, seed: int | None = None) -> Attack:
    """The attack ``name`` as the run's settings configure it (``seed`` replaces the run's)."""
    from ..attacks import Dfme, Jbda, KnockoffNets, UniformNoise, transfer_set

    cfg = ctx.config if seed is None else replace(ctx.config, seed=seed)
    if name == "knockoff-unlabelled":
        # Real digits of the victim's kind without their labels: the pool split (no model saw
        # it), each photographed again until the budget is met. The thief the service's
        # answers help most; SAME's score does not see it by design.
        from ..data.shifts import photo_copies

        real = ctx.splits.pool.images
        pool = photo_copies(real, -(-cfg.budget // max(len(real), 1)), seed=cfg.seed + 1)
        return KnockoffNets(pool, None, "random", seed=cfg.seed, checkpoints=cfg.checkpoints())
    if name.startswith("knockoff-"):
        parts = name.split("-")
        sampling = "adaptive" if parts[-1] == "adaptive" else "random"
        source = "-".join(parts[1:-1] if sampling == "adaptive" else parts[1:])
        pool, groups = transfer_set(
            source, cfg.budget, ctx.shape, seed=cfg.seed + 1, root=cfg.transfer_root
        )
        return KnockoffNets(pool, groups, sampling, seed=cfg.seed, checkpoints=cfg.checkpoints())
    if name == "jbda":
        return Jbda(ctx.jbda_seeds(), seed=cfg.seed)
    if name == "dfme":
        return Dfme(ctx.shape, seed=cfg.seed)
    if name == "noise":
        return UniformNoise(ctx.shape, seed=cfg.seed + 2)
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS + EXTRA_ATTACKS)}")


def default_attacks(transfer_root: str | None) -> tuple[str, ...]:
    """The packaged attacks, and the local-file ones whose files are at ``transfer_root``."""
    from ..attacks import transfer_set_available

    local = [a for a in LOCAL_ATTACKS if transfer_set_available(a.split("-")[1], transfer_root)]
    return ATTACKS + tuple(local)


def detector_scores(out, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every detector's score of ``images`` whose graph outputs are ``out``: SAME at each
    ``a`` of the ablation, its client-window mean, max-softmax, energy and PRADA."""
    from same_defense.core.score import same_score

    from .baselines import energy_score, max_softmax_score, prada_stream, running_mean
    from .defenses import CLIENT_WINDOW

    scores = {
        f"same-a{a:g}": same_score(out.recon_error, out.logits, out.shadow_logits, a)
        for a in ALPHAS
    }
    scores["same-client32"] = running_mean(scores["same-a0.99"], CLIENT_WINDOW)
    scores["max-softmax"] = max_softmax_score(out.logits)
    scores["energy"] = energy_score(out.logits)
    scores["prada"] = 1.0 - prada_stream(images, out.logits.argmax(axis=1))
    return scores
