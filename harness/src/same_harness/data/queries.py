"""Query sources that are not the defender's data: what an attacker or a stranger sends.

- ``noise``: uniform random pixels, the trivial baseline.
- ``digits8x8``: sklearn's 1,797 8x8 handwritten digits, upscaled: another handwriting source,
  standing in for the paper's EMNIST-digits proxy.
- ``natural``: random crops of sklearn's two sample photographs (natural-image transfer set).
All are shaped to the defender's ``(C, H, W)`` and returned as float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np

from same_defense.data.images import resize_all, to_channels

QUERY_SOURCES = ("noise", "digits8x8", "natural")


def digits8x8(n: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Upscaled sklearn digits and their true labels, sampled with replacement past 1,797."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    index = rng.choice(len(digits.images), size=n, replace=n > len(digits.images))
    small = digits.images[index] / 16.0
    channels, height, width = shape
    # MNIST digits sit in a 20x20 box centred in 28x28: pad the 8x8 source to match.
    pad = max(1, round(8 * 4 / 20))
    small = np.pad(small, ((0, 0), (pad, pad), (pad, pad)))
    images = to_channels(resize_all(small, height, width), channels)
    return np.clip(images, 0, 1).astype(np.float32), digits.target[index].astype(np.int64)


def natural_crops(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Random square crops (16 to 96 pixels) of sklearn's sample photographs."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p, dtype=np.float32) / 255.0 for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    crops = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(16, 97))
        top = int(rng.integers(0, photo.shape[0] - side))
        left = int(rng.integers(0, photo.shape[1] - side))
        crop = photo[top : top + side, left : left + side]
        crops.append(resize_all(crop[None], height, width)[0])
    return to_channels(np.stack(crops), channels).astype(np.float32)


def uniform_noise(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def make_query_set(source: str, n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``n`` images of ``source`` shaped ``[n, *shape]``."""
    if source == "noise":
        return uniform_noise(n, shape, seed)
    if source == "digits8x8":
        return digits8x8(n, shape, seed)[0]
    if source == "natural":
        return natural_crops(n, shape, seed)
    raise ValueError(f"unknown query source {source!r}; choose one of {', '.join(QUERY_SOURCES)}")
