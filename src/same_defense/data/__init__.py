"""Data: the defender's images and the attacker's query sources, all float32 NCHW in [0, 1]."""

from .datasets import (
    DATASET_CHOICES,
    ImageSet,
    Splits,
    load_dataset,
    split_dataset,
)
from .queries import QUERY_SOURCES, make_query_set
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
    "QUERY_SOURCES",
    "ImageSet",
    "Splits",
    "load_dataset",
    "make_query_set",
    "source_from_manifest",
    "split_dataset",
    "splits_from_manifest",
]
