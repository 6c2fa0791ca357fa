"""Training: the victim classifier, SAME's masked autoencoder and its shadow classifier."""

from .device import DeviceUnavailable, resolve_device
from .loops import (
    SHADOW_RECIPES,
    TrainConfig,
    evaluate_accuracy,
    predict_logits,
    train_classifier,
    train_mae,
    train_shadow,
)

__all__ = [
    "SHADOW_RECIPES",
    "DeviceUnavailable",
    "TrainConfig",
    "evaluate_accuracy",
    "predict_logits",
    "resolve_device",
    "train_classifier",
    "train_mae",
    "train_shadow",
]
