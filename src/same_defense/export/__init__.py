"""Export: ONNX graphs, their check against PyTorch, calibration and the Triton repository."""
