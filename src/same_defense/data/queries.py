"""Query sources that are not the defender's data: what an attacker or a stranger sends.

- ``noise``: uniform random pixels, the trivial baseline.
- ``digits8x8``: sklearn's 1,797 8x8 handwritten digits, upscaled: another handwriting source,
  standing in for the paper's EMNIST-digits proxy.
- ``natural``: random crops of sklearn's two sample photographs (natural-image transfer set).
All are shaped to the defender's ``(C, H, W)`` and returned as float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np
from PIL import Image

QUERY_SOURCES = ("noise", "digits8x8", "natural")


def _resize_all(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[N, H, W]`` or ``[N, H, W, 3]`` float images in [0, 1] with bilinear filtering."""
    out = []
    for img in images:
        pil = Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255 + 0.5))
        out.append(np.asarray(pil.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255)
    return np.stack(out)


def _to_channels(gray_or_rgb: np.ndarray, channels: int) -> np.ndarray:
    """``[N, H, W]`` (gray) or ``[N, H, W, 3]`` (RGB) -> ``[N, channels, H, W]``."""
    if gray_or_rgb.ndim == 3:
        x = gray_or_rgb[:, None]
        return np.repeat(x, channels, axis=1) if channels > 1 else x
    x = gray_or_rgb.transpose(0, 3, 1, 2)
    return x.mean(axis=1, keepdims=True) if channels == 1 else x


def conform(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """NCHW float images in [0, 1] (1 or 3 channels) -> ``[N, *shape]``: channels converted
    (grey repeated, RGB averaged), then resized bilinearly when the size differs."""
    channels, height, width = shape
    hwc = images.transpose(0, 2, 3, 1)
    if images.shape[2:] != (height, width):
        hwc = _resize_all(hwc[..., 0] if images.shape[1] == 1 else hwc, height, width)
    else:
        hwc = hwc[..., 0] if images.shape[1] == 1 else hwc
    return np.ascontiguousarray(_to_channels(hwc, channels), dtype=np.float32)


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
    images = _to_channels(_resize_all(small, height, width), channels)
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
        crops.append(_resize_all(crop[None], height, width)[0])
    return _to_channels(np.stack(crops), channels).astype(np.float32)


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
