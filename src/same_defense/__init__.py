"""SAME (Sample Reconstruction Against Model Extraction) as a deployable Triton service.

Data flow: ``data`` -> ``train`` -> ``export`` (ONNX, calibration, model repository) ->
``serving`` (embedded Triton, in-process pipeline) -> ``client``. The numpy-only ``core``
(score, policies, input checks) is shared by the Triton step and offline evaluation.
"""

__version__ = "0.1.0"
