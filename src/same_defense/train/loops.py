"""Training loops with progress bars. Inputs follow the project's convention (float32 NCHW)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..models.mae import MaskedAutoencoder


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    augment_shift: int = 2  # random translation in pixels; 0 disables
    progress: bool = True
    # Where the optimisation runs (checked by train.device.resolve_device). Batches are drawn
    # and shifted on the CPU, then moved; the trained model is returned on the CPU, where
    # export and prediction expect it.
    device: str = "cpu"


def _no_bar(config: TrainConfig) -> bool | None:
    """tqdm's ``disable``: None shows a bar only on a terminal (a log file gets none)."""
    return None if config.progress else True


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(
        n, x.shape[1], h, w + 2 * max_shift
    )
    out = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, x.shape[1], h, w)
    return torch.gather(out, 3, cols)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = [
        model(torch.from_numpy(images[i : i + batch_size])).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict_logits(model, images).argmax(axis=1) == labels).mean())


def _cosine_lr(
    optimizer: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: int
) -> None:
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        lr = 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _run_epochs(
    model: nn.Module,
    n: int,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    desc: str,
    seed: int,
    warmup_steps: int = 0,
) -> None:
    """The one training loop: ``config.epochs`` passes over ``n`` samples in batches shuffled
    with ``seed``, the learning rate on a cosine schedule (after ``warmup_steps`` of linear
    warm-up), one optimiser step on ``batch_loss(index)`` per batch, and a progress bar."""
    rng = np.random.default_rng(seed)
    steps = config.epochs * math.ceil(n / config.batch_size)
    bar = tqdm(total=steps, desc=f"train {desc}", disable=_no_bar(config), unit="step")
    step = 0
    for _ in range(config.epochs):
        model.train()
        for index in _batches(n, config.batch_size, rng):
            _cosine_lr(optimizer, config.lr, step, steps, warmup=warmup_steps)
            loss = batch_loss(index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()


def train_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None,
    config: TrainConfig,
    soft_targets: np.ndarray | None = None,
    desc: str = "victim",
) -> nn.Module:
    """Cross-entropy on hard ``labels``, or KL to ``soft_targets`` (probabilities) if given."""
    if labels is None and soft_targets is None:
        raise ValueError("need labels or soft targets")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = torch.device(config.device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def batch_loss(index: np.ndarray) -> torch.Tensor:
        x = random_shift(torch.from_numpy(images[index]), config.augment_shift, gen)
        logits = model(x.to(device))
        if soft_targets is not None:
            target = torch.from_numpy(soft_targets[index]).to(device)
            return F.kl_div(F.log_softmax(logits, 1), target, reduction="batchmean")
        return F.cross_entropy(logits, torch.from_numpy(labels[index]).to(device))

    _run_epochs(model, len(images), config, optimizer, batch_loss, desc, config.seed)
    model.to("cpu").eval()
    return model


def train_mae(
    mae: MaskedAutoencoder, images: np.ndarray, config: TrainConfig, warmup_epochs: int = 2
) -> MaskedAutoencoder:
    """MAE training as the authors do it: AdamW (0.9, 0.95), warm-up then cosine, MSE / mask."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = torch.device(config.device)
    mae.to(device)
    optimizer = torch.optim.AdamW(
        mae.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    ratio = mae.config.mask_ratio

    def batch_loss(index: np.ndarray) -> torch.Tensor:
        x = random_shift(torch.from_numpy(images[index]), config.augment_shift, gen).to(device)
        return F.mse_loss(mae.forward_masked(x), x) / max(ratio, 1e-6)

    warmup = warmup_epochs * math.ceil(len(images) / config.batch_size)
    _run_epochs(mae, len(images), config, optimizer, batch_loss, "MAE", config.seed, warmup)
    mae.to("cpu").eval()
    return mae


SHADOW_RECIPES = ("distill", "authors")


def train_shadow(
    shadow: nn.Module,
    mae: MaskedAutoencoder,
    images: np.ndarray,
    victim_probs: np.ndarray,
    config: TrainConfig,
    recipe: str = "distill",
    labels: np.ndarray | None = None,
) -> nn.Module:
    """Shadow classifier on MAE reconstructions; two recipes.

    - ``distill`` (default): mimic the victim's answers (KL to its probabilities), Adam, on
      half masked (75 %) and half full reconstructions (the score uses full ones).
    - ``authors``: the authors' code: cross-entropy on the true labels, SGD with momentum,
      random shifts, masked (75 %) reconstructions only.

    The reconstructions are drawn afresh every epoch so the shadow sees many maskings.
    """
    if recipe not in SHADOW_RECIPES:
        raise ValueError(f"shadow recipe must be one of {SHADOW_RECIPES}, got {recipe!r}")
    if recipe == "authors" and labels is None:
        raise ValueError("the authors' shadow recipe trains on true labels: pass labels")
    device = torch.device(config.device)
    mae.to(device).eval()
    shadow.to(device)
    torch.manual_seed(config.seed + 1)
    gen = torch.Generator().manual_seed(config.seed + 1)
    if recipe == "authors":
        optimizer = torch.optim.SGD(shadow.parameters(), lr=config.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(shadow.parameters(), lr=config.lr)

    def batch_loss(index: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images[index])
        with torch.no_grad():
            if recipe == "authors":
                recon = mae.forward_masked(random_shift(x, config.augment_shift, gen).to(device))
            else:
                # Half masked (as the authors), half full reconstructions (as scored).
                x = x.to(device)
                recon = torch.cat([mae.forward_masked(x[::2]), mae.reconstruct(x[1::2])])
        if recipe == "authors":
            target = torch.from_numpy(labels[index]).to(device)
            return F.cross_entropy(shadow(recon), target)
        probs = victim_probs[index]
        target = torch.from_numpy(np.concatenate([probs[::2], probs[1::2]])).to(device)
        return F.kl_div(F.log_softmax(shadow(recon), 1), target, reduction="batchmean")

    _run_epochs(shadow, len(images), config, optimizer, batch_loss, "shadow", config.seed + 1)
    mae.to("cpu")
    shadow.to("cpu").eval()
    return shadow
