"""How honest customers' images differ from the training data: camera, pen, scanner, lighting.

A reconstruction score measures distance from the training data; a customer with another
camera or pen moves that distance as a thief does. The evaluation sends real test digits
through these shifts, each at several strengths, to see who pays for the defense. Every
function maps ``[N, C, H, W]`` float32 in [0, 1] to the same shape and range and is
deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

Shift = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _per_image(images: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        for c in range(img.shape[0]):
            out[i, c] = fn(img[c])
    return out


def blur(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A camera slightly out of focus: Gaussian blur, sigma drawn in ``[0.8, 1.2] x sigma``."""
    from scipy.ndimage import gaussian_filter

    sigmas = rng.uniform(0.8, 1.2, len(images)) * sigma
    out = np.empty_like(images)
    for i, img in enumerate(images):
        out[i] = gaussian_filter(img, sigma=(0, sigmas[i], sigmas[i]))
    return out


def thicker_pen(images: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """A broader pen: grey dilation by a ``size`` x ``size`` square (2 or 3)."""
    from scipy.ndimage import grey_dilation

    k = int(size)
    return _per_image(images, lambda x: grey_dilation(x, size=(k, k)))


def thinner_pen(images: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """A finer pen: grey erosion by a ``size`` x ``size`` cross-free square."""
    from scipy.ndimage import grey_erosion

    k = int(size)
    return _per_image(images, lambda x: grey_erosion(x, size=(k, k)))


def contrast(images: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Fainter (factor < 1) or harsher (factor > 1) ink around mid-grey, clipped."""
    return np.clip((images - 0.5) * factor + 0.5 * factor, 0, 1).astype(np.float32)


def brightness(images: np.ndarray, offset: float, rng: np.random.Generator) -> np.ndarray:
    """A lighter background (grey paper, a lit scene): ``offset`` added everywhere, clipped."""
    return np.clip(images + offset, 0, 1).astype(np.float32)


def _affine(images: np.ndarray, angle: float, scale: float) -> np.ndarray:
    def one(x: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(x.astype(np.float32), mode="F")
        w, h = pil.size
        pil = pil.rotate(angle, Image.BILINEAR)
        if scale != 1.0:
            sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
            scaled = np.asarray(pil.resize((sw, sh), Image.BILINEAR), np.float32)
            canvas = np.zeros((h, w), np.float32)
            top, left = (h - sh) // 2, (w - sw) // 2
            src = scaled[max(0, -top) : max(0, -top) + h, max(0, -left) : max(0, -left) + w]
            canvas[
                max(0, top) : max(0, top) + src.shape[0], max(0, left) : max(0, left) + src.shape[1]
            ] = src
            return canvas
        return np.asarray(pil, np.float32)

    return np.clip(_per_image(images, one), 0, 1)


def rotation(images: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """A tilted page: each image rotated by +-``degrees``, the sign drawn per image."""
    out = np.empty_like(images)
    for i in range(len(images)):
        out[i : i + 1] = _affine(images[i : i + 1], float(rng.choice((-1, 1)) * degrees), 1.0)
    return out


def zoom(images: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Another framing: the digit scaled by ``scale`` about the centre."""
    return _affine(images, 0.0, scale)


def sensor_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A cheap sensor: additive Gaussian noise of standard deviation ``sigma``, clipped."""
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 1).astype(np.float32)


def jpeg(images: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Compression on the way: a JPEG round trip at ``quality``."""
    import io

    def one(x: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255 + 0.5)).save(
            buffer, format="JPEG", quality=int(quality)
        )
        return np.asarray(Image.open(buffer), np.float32) / 255.0

    return _per_image(images, one)


def scanner(images: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
    """Another scanner: a gamma curve, a faint grey floor and a slight blur together."""
    from scipy.ndimage import gaussian_filter

    curved = np.power(np.clip(images, 0, 1), gamma)
    soft = np.stack([gaussian_filter(x, sigma=(0, 0.5, 0.5)) for x in curved])
    return np.clip(0.06 + 0.94 * soft, 0, 1).astype(np.float32)


def photo_copies(images: np.ndarray, copies: int, seed: int = 0) -> np.ndarray:
    """``copies`` distinct photos of each image: moved up to 2 pixels, turned up to 10
    degrees, a little sensor noise. Copies of one image are adjacent in the result. What an
    honest user with a phone sends of the same few digits, and what a thief sends to dilute."""
    rng = np.random.default_rng(seed)
    base = np.repeat(np.asarray(images, np.float32), copies, axis=0)
    out = np.empty_like(base)
    h, w = base.shape[2:]
    for i, img in enumerate(base):
        dy, dx = rng.integers(-2, 3, 2)
        moved = np.roll(np.roll(img, dy, axis=1), dx, axis=2)  # digits sit on a black margin
        angle = float(rng.uniform(-10, 10))
        out[i] = _affine(moved[None], angle, 1.0)[0] if angle else moved
    noisy = out + rng.normal(0, 0.03, out.shape)
    return np.ascontiguousarray(np.clip(noisy, 0, 1), dtype=np.float32)


# kind -> (function, strengths from mild to strong). Strengths are in the function's own unit.
SHIFTS: dict[str, tuple[Shift, tuple[float, ...]]] = {
    "blur": (blur, (0.6, 0.8, 1.0, 1.4)),
    "thicker-pen": (thicker_pen, (2, 3)),
    "thinner-pen": (thinner_pen, (2,)),
    "fainter": (contrast, (0.7, 0.5)),
    "brighter": (brightness, (0.1, 0.2)),
    "rotation": (rotation, (10.0, 20.0)),
    "zoom": (zoom, (0.85, 1.15)),
    "sensor-noise": (sensor_noise, (0.05, 0.1)),
    "jpeg": (jpeg, (50.0, 20.0)),
    "scanner": (scanner, (0.7, 1.5)),
}


def shift_names() -> list[str]:
    """Every ``kind@strength`` the evaluation runs, mild first within a kind."""
    return [f"{kind}@{s:g}" for kind, (_, strengths) in SHIFTS.items() for s in strengths]


def apply_shift(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Apply ``kind@strength`` (see :func:`shift_names`) to ``images``."""
    kind, _, strength = name.partition("@")
    if kind not in SHIFTS:
        raise ValueError(f"unknown shift {kind!r}; choose one of {', '.join(SHIFTS)}")
    fn, strengths = SHIFTS[kind]
    value = float(strength) if strength else strengths[0]
    rng = np.random.default_rng([seed, list(SHIFTS).index(kind)])
    out = fn(np.asarray(images, np.float32), value, rng)
    return np.ascontiguousarray(np.clip(out, 0, 1), dtype=np.float32)
