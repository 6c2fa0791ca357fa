"""Query lineage: whether a query is a small step from one the account sent before.

A pattern thieves show and drifting customers do not. JBDA (Papernot et al., 2017) builds its
queries as ``x + lambda * sign(gradient)`` from queries it already sent, so nearly every query
after its seed set lies within ``lambda`` of an earlier one; a customer whose camera blurs or
whose scanner fades sends different digits, each far from the others. By its SAME scores
alone a JBDA account looks like a customer with a noisy, brighter sensor (flag rate 0.68
against 0.94 for ``brighter@0.1``, the victim as confident on both), so the graded response
asks for lineage before it lets JBDA-like evidence mislead an account by itself
(:mod:`.accounts`, strong evidence).

A query is summarised by a *sketch*: its channel mean averaged over a 7x7 grid of blocks,
stretched to the full range (darkest block 0, brightest 255), as bytes. Averaging keeps a sign
step's change small (``lambda`` at most, about ``lambda / 2`` on a background) while a shift of
a pen stroke by two pixels, or another digit, moves whole blocks. The stretch keeps faint or
brightened digits as far apart as ordinary ones: without it, half the contrast halved every
distance, and one in two faint digits came within the tolerance of an earlier one after
2,000 queries (against one in twenty for ordinary digits).
Exact repeats never get here (the account layer counts each distinct sample once).
"""

from __future__ import annotations

import numpy as np

GRID = 7  # blocks per side of a sketch
SKETCH_SIZE = GRID * GRID
# Largest per-block difference (of 255) at which two sketches count as the same query moved a
# little: JBDA's default step (lambda 0.1) moves a stretched block by at most about 29; 40
# leaves room for steps up to about 0.13. Honest digits: 6 % (blur@1.4: 11 %) have a
# neighbour this close among 3,000 earlier ones; JBDA's queries after its seed set, 97 %.
DEFAULT_TOLERANCE = 40


def _block_means(values: np.ndarray, axis: int, blocks: int) -> np.ndarray:
    """Means over ``blocks`` near-equal runs along ``axis`` (any length >= 1)."""
    length = values.shape[axis]
    starts = np.linspace(0, length, min(blocks, length) + 1).astype(int)
    sums = np.add.reduceat(values, starts[:-1], axis=axis)
    counts = np.diff(starts).reshape([-1 if a == axis else 1 for a in range(values.ndim)])
    means = sums / counts
    if means.shape[axis] < blocks:  # fewer pixels than blocks: repeat the last one
        pad = [(0, 0)] * values.ndim
        pad[axis] = (0, blocks - means.shape[axis])
        means = np.pad(means, pad, mode="edge")
    return means


def sketches(images: np.ndarray) -> np.ndarray:
    """``uint8 [N, 49]``: each image's 7x7 block means, stretched to the range 0-255.

    The channel mean over a 7x7 grid of blocks, darkest block 0, brightest 255 (a flat image
    is all 0).

    ``images`` is ``[N, C, H, W]``, ``[N, H, W]`` or ``[N, D]`` (a flat row is one line of
    pixels); block means outside [0, 1] are clipped (the input contract refuses such pixels).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1)
    elif x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f"expected [N, C, H, W], [N, H, W] or [N, D] images, got {x.shape}")
    n, h, w = x.shape
    if h % GRID == 0 and w % GRID == 0:  # 28x28, 56x56...: one reshape, the gateway's hot path
        # rows of blocks first, then columns: two contiguous sums, twice as fast at batch 64
        rows = x.reshape(n, GRID, h // GRID, w).sum(axis=2)
        blocks = rows.reshape(n, GRID, GRID, w // GRID).sum(axis=3)
        pooled = blocks * np.float32(GRID * GRID / (h * w))
    else:
        pooled = _block_means(_block_means(x, 1, GRID), 2, GRID)
    # NaN or Inf pixels: the defense refuses such a request, but the gateway sketches it first
    flat = np.clip(np.nan_to_num(pooled.reshape(n, -1), nan=0.0, posinf=1.0, neginf=0.0), 0, 1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scale = np.where(span > 1e-6, 255.0 / np.maximum(span, 1e-6), 0.0)
    return np.rint((flat - low) * scale).astype(np.uint8)


def _is_step(distance: np.ndarray, tolerance: int) -> np.ndarray:
    return (distance > 0) & (distance <= tolerance)


def near_repeats(
    new: np.ndarray, past: np.ndarray, tolerance: int = DEFAULT_TOLERANCE, chunk: int = 512
) -> np.ndarray:
    """``bool [N]``: whether each of ``new`` is near a sketch in ``past`` or an earlier one.

    Near: within ``tolerance`` (of 255) in every block, and not the very same sketch. A step
    of zero is not a step: the same image sent again (by this account it never gets here; by
    another, such as two customers sending one public sample image through one new camera)
    says nothing about a thief building queries from earlier ones, and JBDA's steps always
    move some block.
    """
    new = np.asarray(new, dtype=np.int16).reshape(len(new), -1)
    past = np.asarray(past, dtype=np.int16).reshape(-1, new.shape[1] if len(new) else SKETCH_SIZE)
    out = np.zeros(len(new), dtype=bool)
    if not len(new):
        return out
    # Within the request: row i against rows before it.
    within = _is_step(np.abs(new[:, None, :] - new[None, :, :]).max(axis=2), tolerance)
    out |= np.tril(within, k=-1).any(axis=1)
    step = max(1, chunk * 64 // len(new))  # about chunk * 64 block differences at a time
    for start in range(0, len(past), step):
        block = past[start : start + step]
        distance = np.abs(new[:, None, :] - block[None, :, :]).max(axis=2)
        out |= _is_step(distance, tolerance).any(axis=1)
        if out.all():
            break
    return out
