"""PyTorch networks: the victim classifier, SAME's masked autoencoder and the export wrapper."""

from .mae import MAE_PRESETS, MaeConfig, MaskedAutoencoder, fit_to_shape
from .reconstructor import ReconstructorGraph
from .victim import VICTIM_ARCHITECTURES, build_classifier

__all__ = [
    "MAE_PRESETS",
    "VICTIM_ARCHITECTURES",
    "MaeConfig",
    "MaskedAutoencoder",
    "ReconstructorGraph",
    "build_classifier",
    "fit_to_shape",
]
