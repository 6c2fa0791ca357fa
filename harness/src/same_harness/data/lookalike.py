"""Look-alike transfer data: digits from sources other than the defender's, built here.

A thief who has read the docs does not send noise or photographs: it sends data that look like
the service's own, which is where a reconstruction score is weakest. Two sources, both
labelled (the true digit) and shaped like MNIST (a digit in a 20x20 box centred in 28x28,
white on black, then resized to the defender's shape):

- ``fonts``: the digits 0-9 rendered from the TrueType fonts that ship inside matplotlib
  (DejaVu, STIX, Computer Modern: 24 faces, regular, bold, italic), each drawn at a random
  size, slant, rotation, offset and stroke width, softened a little as a scan would be.
- ``strokes``: "written" digits: a polyline template per digit (one or two strokes, as a hand
  draws them), every point jittered, drawn with a round pen of random width, then blurred.

Neither is a copy of MNIST; both are what a thief with a font folder or a drawing script gets
in an afternoon. Deterministic for a seed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

LOOKALIKE_SOURCES = ("fonts", "strokes")
_CANVAS = 112  # drawn at 4x the 28-pixel target, then reduced (anti-aliasing for free)

# One or two strokes per digit on a 0-1 box (x right, y down), roughly as people write them.
_TEMPLATES: dict[int, list[list[tuple[float, float]]]] = {
    0: [
        [
            (0.5, 0.0),
            (0.15, 0.2),
            (0.1, 0.6),
            (0.35, 1.0),
            (0.7, 0.95),
            (0.9, 0.5),
            (0.8, 0.1),
            (0.5, 0.0),
        ]
    ],
    1: [[(0.3, 0.2), (0.55, 0.0), (0.55, 1.0)]],
    2: [[(0.15, 0.2), (0.45, 0.0), (0.8, 0.15), (0.75, 0.45), (0.1, 1.0), (0.9, 1.0)]],
    3: [[(0.15, 0.1), (0.6, 0.0), (0.8, 0.25), (0.4, 0.48), (0.85, 0.7), (0.6, 1.0), (0.15, 0.9)]],
    4: [[(0.65, 1.0), (0.65, 0.0), (0.1, 0.7), (0.9, 0.7)]],
    5: [[(0.85, 0.0), (0.25, 0.0), (0.2, 0.45), (0.65, 0.4), (0.85, 0.7), (0.6, 1.0), (0.15, 0.9)]],
    6: [[(0.75, 0.0), (0.3, 0.3), (0.15, 0.75), (0.45, 1.0), (0.8, 0.8), (0.7, 0.5), (0.3, 0.55)]],
    7: [[(0.1, 0.0), (0.9, 0.0), (0.4, 1.0)], [(0.3, 0.5), (0.75, 0.5)]],
    8: [
        [
            (0.5, 0.48),
            (0.2, 0.25),
            (0.5, 0.0),
            (0.8, 0.25),
            (0.5, 0.48),
            (0.15, 0.75),
            (0.5, 1.0),
            (0.85, 0.75),
            (0.5, 0.48),
        ]
    ],
    9: [[(0.8, 0.4), (0.45, 0.5), (0.2, 0.25), (0.5, 0.0), (0.8, 0.2), (0.75, 0.6), (0.55, 1.0)]],
}


@lru_cache(maxsize=1)
def font_files() -> tuple[Path, ...]:
    """The digit-capable TrueType faces bundled with matplotlib (always installed here)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    skip = ("Siz", "NonUni", "LastResort", "cmex", "cmsy", "cmmi", "Display")
    return tuple(sorted(p for p in folder.glob("*.ttf") if not any(s in p.name for s in skip)))


def _box_and_centre(canvas: Image.Image) -> np.ndarray:
    """MNIST's framing: the ink scaled into a 20x20 box, centred by its centre of mass."""
    arr = np.asarray(canvas, dtype=np.float32) / 255.0
    ys, xs = np.nonzero(arr > 0.05)
    if len(ys) == 0:
        return np.zeros((28, 28), np.float32)
    crop = canvas.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    w, h = crop.size
    scale = 20.0 / max(w, h)
    crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    digit = np.asarray(crop, dtype=np.float32) / 255.0
    out = np.zeros((28, 28), np.float32)
    total = digit.sum()
    cy, cx = (np.indices(digit.shape) * digit).reshape(2, -1).sum(axis=1) / max(total, 1e-6)
    top = int(np.clip(round(14 - cy), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - digit.shape[1]))
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.clip(out, 0, 1)


def _render_font_digit(digit: int, font: Path, rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    face = ImageFont.truetype(str(font), size=int(rng.integers(60, 90)))
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 4))  # thicker pens than the face itself, sometimes
    draw.text(
        (_CANVAS / 2, _CANVAS / 2),
        str(digit),
        fill=255,
        font=face,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=255,
    )
    shear = float(rng.uniform(-0.25, 0.25))  # a hand's slant
    canvas = canvas.transform(
        canvas.size, Image.AFFINE, (1, shear, -shear * _CANVAS / 2, 0, 1, 0), Image.BILINEAR
    )
    canvas = canvas.rotate(float(rng.uniform(-12, 12)), Image.BILINEAR)
    canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 2.5))))
    return _box_and_centre(canvas)


def _render_stroke_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    width = int(rng.integers(7, 16))
    aspect = float(rng.uniform(0.55, 0.9))  # digits are taller than wide
    slant = float(rng.uniform(-0.3, 0.15))
    for stroke in _TEMPLATES[digit]:
        pts = np.asarray(stroke) + rng.normal(0, 0.045, (len(stroke), 2))
        x = (pts[:, 0] - 0.5) * aspect + slant * (0.5 - pts[:, 1]) + 0.5
        xy = [(20 + 72 * a, 20 + 72 * b) for a, b in zip(x, pts[:, 1], strict=True)]
        draw.line(xy, fill=255, width=width, joint="curve")
        r = width / 2
        for px, py in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 3.0))))
    return _box_and_centre(canvas)


def lookalike_digits(
    source: str, n: int, shape: tuple[int, int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` look-alike digits of ``source`` as ``[n, *shape]`` float32 in [0, 1], and labels
    (memoised per process: rendering 4,000 font digits takes about 30 s on one core)."""
    images, labels = _lookalike_digits(source, n, tuple(shape), seed)
    return images.copy(), labels.copy()


@lru_cache(maxsize=8)
def _lookalike_digits(
    source: str, n: int, shape: tuple[int, int, int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from same_defense.data.images import conform

    if source not in LOOKALIKE_SOURCES:
        raise ValueError(
            f"unknown look-alike source {source!r}; choose one of {', '.join(LOOKALIKE_SOURCES)}"
        )
    rng = np.random.default_rng([seed, LOOKALIKE_SOURCES.index(source)])
    labels = rng.integers(0, 10, n).astype(np.int64)
    fonts = font_files()
    images = np.empty((n, 28, 28), np.float32)
    for i, digit in enumerate(labels):
        if source == "fonts":
            images[i] = _render_font_digit(int(digit), fonts[rng.integers(len(fonts))], rng)
        else:
            images[i] = _render_stroke_digit(int(digit), rng)
    return conform(images[:, None], shape), labels
