"""A tiny RGB data set for tests: 3x32x32 images of 5 easy classes, written as an image folder
(``--data folder``) or as CIFAR-style pickles (``--data cifar10`` / the CIFAR-100 transfer set).

Class ``k`` is a soft blob whose colour and position depend on ``k``, over noise: a small CNN
learns it in one or two epochs, so a repository built on it is a real (if easy) classifier.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("red", "green", "blue", "yellow", "purple")
_COLOURS = np.array(
    [[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1], [0.7, 0.1, 0.8]],
    dtype=np.float32,
)


def tiny_rgb_images(
    per_class: int = 60, size: int = 32, classes: int = len(CLASSES), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 3, size, size] float32 in [0, 1], labels [N] int64)``, classes interleaved."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images, labels = [], []
    for _ in range(per_class):
        for k in range(classes):
            cy = 0.3 + 0.4 * ((k % 2) + rng.uniform(-0.1, 0.1))
            cx = 0.15 + 0.7 * k / max(1, classes - 1) + rng.uniform(-0.03, 0.03)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
            colour = _COLOURS[k % len(_COLOURS)][:, None, None]
            noise = rng.uniform(0, 0.3, (3, size, size)).astype(np.float32)
            images.append(np.clip(0.6 * blob * colour + noise, 0, 1))
            labels.append(k)
    return np.stack(images).astype(np.float32), np.asarray(labels, dtype=np.int64)


def write_image_folder(root: Path, per_class: int = 60, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``, the layout ``--data folder`` reads; returns ``root``."""
    images, labels = tiny_rgb_images(per_class, seed=seed)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.uint8(image.transpose(1, 2, 0) * 255 + 0.5)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def write_cifar10(root: Path, per_class: int = 60, seed: int = 0) -> Path:
    """Stand-in CIFAR-10 files (``root/cifar-10-batches-py``), the 10 classes of the real set."""
    images, labels = tiny_rgb_images(per_class, classes=10, seed=seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for part, name in zip(np.array_split(np.arange(len(images)), len(names)), names, strict=True):
        batch = {
            b"data": np.uint8(images[part] * 255 + 0.5).reshape(len(part), -1),
            b"labels": labels[part].tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def write_cifar100(root: Path, n: int = 200, seed: int = 1) -> Path:
    """Stand-in CIFAR-100 files (``root/cifar-100-python/{train,test,meta}``)."""
    images, _ = tiny_rgb_images(max(1, n // len(CLASSES)), seed=seed)
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    half = len(images) // 2
    for name, part in (("train", images[:half]), ("test", images[half:])):
        batch = {
            b"data": np.uint8(part * 255 + 0.5).reshape(len(part), -1),
            b"fine_labels": rng.integers(0, 100, len(part)).tolist(),
            b"coarse_labels": rng.integers(0, 20, len(part)).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root
