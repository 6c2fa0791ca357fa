"""gRPC client of the ``same`` endpoint (tritonclient), for users and for attack code."""

from .api import Prediction, SameClient, SameClientError

__all__ = ["Prediction", "SameClient", "SameClientError"]
