"""Serving: the embedded Triton server, its Python-based onnxruntime backend and the Triton
defense step (package data), and ``same-serve``: Triton on loopback behind the gateway."""
