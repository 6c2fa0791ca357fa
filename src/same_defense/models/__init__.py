"""PyTorch networks: the victim classifier, SAME's masked autoencoder and the export wrapper."""

from .mae import MaeConfig, MaskedAutoencoder, fit_to_shape
from .presets import DEFAULT_PRESET, PRESETS, Preset
from .reconstructor import ReconstructorGraph
from .victim import SHADOW_ONLY_ARCHITECTURES, VICTIM_ARCHITECTURES, build_classifier

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "Preset",
    "SHADOW_ONLY_ARCHITECTURES",
    "VICTIM_ARCHITECTURES",
    "MaeConfig",
    "MaskedAutoencoder",
    "ReconstructorGraph",
    "build_classifier",
    "fit_to_shape",
]
