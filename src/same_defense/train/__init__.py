"""Training: the victim classifier, SAME's masked autoencoder and its shadow classifier."""

from .loops import (
    TrainConfig,
    evaluate_accuracy,
    predict_logits,
    train_classifier,
    train_mae,
    train_shadow,
)

__all__ = [
    "TrainConfig",
    "evaluate_accuracy",
    "predict_logits",
    "train_classifier",
    "train_mae",
    "train_shadow",
]
