"""Images from anywhere made into the defender's shape: ``[N, C, H, W]`` float32 in [0, 1].

The build conforms a new source's unlabelled images for recalibration with it; the harness
conforms its query sources the same way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_all(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[N, H, W]`` or ``[N, H, W, 3]`` float images in [0, 1] with bilinear filtering."""
    out = []
    for img in images:
        pil = Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255 + 0.5))
        out.append(np.asarray(pil.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255)
    return np.stack(out)


def to_channels(gray_or_rgb: np.ndarray, channels: int) -> np.ndarray:
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
        hwc = resize_all(hwc[..., 0] if images.shape[1] == 1 else hwc, height, width)
    else:
        hwc = hwc[..., 0] if images.shape[1] == 1 else hwc
    return np.ascontiguousarray(to_channels(hwc, channels), dtype=np.float32)
