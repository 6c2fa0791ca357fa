"""Export (``same-build``): the build's stages, ONNX graphs and their check against PyTorch,
calibration, the Triton model configs and the repository writer; ``victim/`` wraps a
provider's own victim."""
