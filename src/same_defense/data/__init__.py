"""Data: the defender's images and their splits, all float32 NCHW in [0, 1] (the attacker's
query sources are the harness's: ``same_harness.data``)."""

from .datasets import (
    DATASET_CHOICES,
    ImageSet,
    Splits,
    load_dataset,
    split_dataset,
)
from .source import (
    DATA_ROOT_ENV,
    DataSource,
    DataSourceError,
    source_from_manifest,
    splits_from_manifest,
)

__all__ = [
    "DATASET_CHOICES",
    "DATA_ROOT_ENV",
    "DataSource",
    "DataSourceError",
    "ImageSet",
    "Splits",
    "load_dataset",
    "source_from_manifest",
    "split_dataset",
    "splits_from_manifest",
]
