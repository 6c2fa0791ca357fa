"""Kubernetes manifests rendered from the same settings as the embedded deployment."""

from .render import render
from .settings import DeploySettings

__all__ = ["DeploySettings", "render"]
