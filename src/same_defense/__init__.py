"""SAME (Sample Reconstruction Against Model Extraction) as a deployable Triton service.

Data flow: ``data`` -> ``train`` -> ``export`` (ONNX, calibration, model repository) ->
``serving`` (embedded Triton behind the ``gateway``, with ``accounts``) -> ``client``. The
numpy-only ``core`` (score, policies, input checks, the repository contract) is shared by the
Triton step, the in-process ``runtime`` and the offline evaluation (``same_harness``, a
separate package). docs/architecture.md draws the layers.
"""

__version__ = "0.1.0"
