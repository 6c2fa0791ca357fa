"""Evaluation of SAME against extraction attacks: metrics, baselines, the defense matrix and
its report (``python -m same_harness.evaluation.run``)."""

from .baselines import (
    Prada,
    energy_score,
    first_flag,
    max_softmax_score,
    prada_stream,
    running_mean,
)
from .defenses import DEFENSE_NAMES, CachedGraphs, DefendedPipeline, Defense, build_defenses
from .metrics import answer_accuracy, clone_metrics, detection_metrics, fpr_at_tpr

__all__ = [
    "DEFENSE_NAMES",
    "CachedGraphs",
    "DefendedPipeline",
    "Defense",
    "Prada",
    "answer_accuracy",
    "build_defenses",
    "clone_metrics",
    "detection_metrics",
    "energy_score",
    "first_flag",
    "fpr_at_tpr",
    "max_softmax_score",
    "prada_stream",
    "running_mean",
]
