"""Data: the defender's images and the attacker's query sources, all float32 NCHW in [0, 1]."""

from .datasets import (
    DATASET_CHOICES,
    ImageSet,
    Splits,
    load_dataset,
    split_dataset,
)
from .queries import QUERY_SOURCES, make_query_set

__all__ = [
    "DATASET_CHOICES",
    "QUERY_SOURCES",
    "ImageSet",
    "Splits",
    "load_dataset",
    "make_query_set",
    "split_dataset",
]
