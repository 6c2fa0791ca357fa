"""Data layer: real loaders on small files written here, the split and the query sources."""

import gzip
import pickle

import numpy as np
import pytest
from PIL import Image
from same_harness.data.queries import make_query_set

from same_defense.data import load_dataset, split_dataset
from same_defense.data.datasets import ImageSet, read_idx


def _write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_loader_reads_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), True)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    data = load_dataset("fashion-mnist", tmp_path)
    assert data.images.shape == (10, 1, 28, 28) and data.images.dtype == np.float32
    assert data.images.max() <= 1.0 and data.class_names[0] == "T-shirt/top"


def test_idx_loader_refuses_truncated_file(tmp_path):
    path = tmp_path / "bad-idx"
    _write_idx(path, np.zeros((5, 2, 2)))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)


def test_cifar10_loader(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.full((2, 3072), 255, np.uint8), b"labels": [1, 2]}
        (folder / name).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar10", tmp_path)
    assert data.images.shape == (12, 3, 32, 32) and data.images.max() == 1.0
    assert data.class_names[1] == "automobile"


def test_image_folder_loader(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((10, 12), 128, np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset("folder", tmp_path)
    assert data.images.shape == (4, 1, 10, 12)
    assert list(data.labels) == [0, 0, 1, 1] and data.class_names == ("cat", "dog")


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", tmp_path / "nope")


def test_split_is_deterministic_stratified_and_disjoint():
    images = np.zeros((200, 1, 4, 4), np.float32)
    images[:, 0, 0, 0] = np.arange(200) / 200
    data = ImageSet(images, np.repeat(np.arange(4), 50), ("a", "b", "c", "d"), "toy")
    a, b = split_dataset(data, seed=3), split_dataset(data, seed=3)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    ids = [set(s.images[:, 0, 0, 0].tolist()) for s in (a.train, a.calibration, a.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 200
    assert np.bincount(a.test.labels).tolist() == [8, 8, 8, 8]  # 15 % of 50, rounded


def test_imageset_refuses_out_of_convention_arrays():
    with pytest.raises(ValueError, match="float32"):
        ImageSet(np.zeros((1, 1, 2, 2)), np.zeros(1, np.int64), ("a",), "x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageSet(np.full((1, 1, 2, 2), 2, np.float32), np.zeros(1, np.int64), ("a",), "x")


@pytest.mark.parametrize("source", ["noise", "digits8x8", "natural"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_query_sources_follow_the_convention(source, shape):
    x = make_query_set(source, 5, shape, seed=0)
    assert x.shape == (5, *shape) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.01


def test_cifar100_loader_reads_fine_labels_and_names(tmp_path):
    from .tiny_rgb import write_cifar100

    write_cifar100(tmp_path, n=40)
    data = load_dataset("cifar100", tmp_path)
    assert data.images.shape == (40, 3, 32, 32) and data.images.dtype == np.float32
    assert len(data.class_names) == 100 and data.labels.max() < 100


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 16, 24)])
def test_conform_converts_channels_and_size(shape):
    from same_defense.data.images import conform

    rgb = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    out = conform(rgb, shape)
    assert out.shape == (4, *shape) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    if shape == (3, 32, 32):
        np.testing.assert_array_equal(out, rgb)


def test_cifar100_transfer_set_needs_its_files(tmp_path):
    from same_harness.attacks import transfer_set, transfer_set_available

    from .tiny_rgb import write_cifar100

    assert not transfer_set_available("cifar100", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        transfer_set("cifar100", 10, (3, 32, 32), root=tmp_path)
    write_cifar100(tmp_path, n=40)
    pool, groups = transfer_set("cifar100", 60, (1, 28, 28), seed=1, root=tmp_path)
    assert pool.shape == (60, 1, 28, 28) and groups.shape == (60,)  # 40 files + 20 shifted


def test_mae_patch_fits_the_image_size():
    from same_defense.models import PRESETS, fit_to_shape

    assert fit_to_shape(PRESETS["tiny"].mae, (1, 28, 28)).patch == 7
    assert fit_to_shape(PRESETS["tiny"].mae, (3, 32, 32)).patch == 8
    assert fit_to_shape(PRESETS["cpu"].mae, (3, 32, 32)) is PRESETS["cpu"].mae
