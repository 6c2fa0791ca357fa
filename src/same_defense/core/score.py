"""The SAME score (Xie et al., AAAI 2024): reconstruction error mixed with victim/shadow KL."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax as float32."""
    return np.exp(log_softmax(logits)).astype(np.float32)


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row, in nats."""
    log_p = log_softmax(p_logits)
    log_q = log_softmax(q_logits)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=1)


def same_score(
    recon_error: np.ndarray,
    victim_logits: np.ndarray,
    shadow_logits: np.ndarray,
    alpha: float,
) -> np.ndarray:
    """``alpha * MSE(x_hat, x) + (1 - alpha) * KL(victim(x) || shadow(x_hat)) / C`` per sample.

    ``recon_error`` is the per-sample mean squared error of the full (mask ratio 0)
    reconstruction, shape ``[N]`` or ``[N, 1]``. Higher means more attacker-like.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mse = np.asarray(recon_error, dtype=np.float64).reshape(-1)
    victim_logits = np.asarray(victim_logits)
    num_classes = victim_logits.shape[1]
    kl = kl_divergence(victim_logits, shadow_logits)
    return alpha * mse + (1.0 - alpha) * kl / num_classes


def rescaled_alpha(alpha: float, pixel_scale: float) -> float:
    """The weight that keeps the score's meaning when pixels are scaled by ``pixel_scale``.

    The authors' code scores pixels in [-1, 1] (scale 2 from [0, 1]), which multiplies the
    reconstruction MSE by 4 and leaves the KL as it is: their ``a = 0.99`` on [-1, 1] equals
    ``rescaled_alpha(0.99, 2) = 0.9975`` on this project's [0, 1] pixels.
    """
    weighted = alpha * pixel_scale**2
    return weighted / (weighted + 1.0 - alpha)
