"""The repository's graphs run in this process with onnxruntime, no server.

The build checks and calibrates with it, the offline evaluation sweeps with it and the bench
measures the compute floor with it: the same ONNX files, manifest check and defense code as
the served ensemble (:mod:`same_defense.core`).
"""
