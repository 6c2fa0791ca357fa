"""The repository contract: where each file of a SAME model repository lives and what it names.

``same-build`` writes a Triton model repository; Triton, the gateway, the client, the
Kubernetes render and the evaluation read it back. This module is the one place that names
its layout, so a path, a tensor or a metric is renamed once. It imports only ``os`` (not
numpy): the Triton step reads it from the ``same_core`` copy, and numpy-free tools may too.

Layout (``same`` is the only model clients are meant to call)::

    victim/1/model.onnx               IMAGE -> LOGITS                 backend "onnxruntime"
    victim/provided.onnx              a provider's own ONNX victim, kept verbatim (not served)
    reconstructor/1/model.onnx        IMAGE -> RECON_ERROR, SHADOW_LOGITS, INPUT_STATS
    defense/1/model.py                Python step: check, score, flag, respond
    defense/1/same_core/              numpy-only copy of ``same_defense.core``
    defense/1/same_calibration.json   the manifest: threshold, alpha, shapes, ONNX SHA-256
    same/                             the ensemble: IMAGE -> PROBS, LABEL (+ ACCOUNT_PVALUE)
"""

from __future__ import annotations

import os

# Model names: the three steps and the ensemble clients call.
VICTIM = "victim"
RECONSTRUCTOR = "reconstructor"
DEFENSE = "defense"
ENSEMBLE = "same"
MODELS = (VICTIM, RECONSTRUCTOR, DEFENSE, ENSEMBLE)

# Files, relative to the repository root ("/" separated, as Triton and the manifest write them).
MANIFEST_NAME = "same_calibration.json"
DEFENSE_VERSION_DIR = f"{DEFENSE}/1"
MANIFEST_FILE = f"{DEFENSE_VERSION_DIR}/{MANIFEST_NAME}"
DEFENSE_STEP_FILE = f"{DEFENSE_VERSION_DIR}/model.py"
CORE_COPY_DIR = f"{DEFENSE_VERSION_DIR}/same_core"
ONNX_FILES = {VICTIM: f"{VICTIM}/1/model.onnx", RECONSTRUCTOR: f"{RECONSTRUCTOR}/1/model.onnx"}
# Triton loads only version folders, so a file beside them is kept without being served.
PROVIDED_VICTIM_FILE = f"{VICTIM}/provided.onnx"
CONFIG_NAME = "config.pbtxt"

# Tensor names. The reconstructor's three outputs feed the defense step with the victim's
# logits; ACCOUNT_OUTPUT is internal (the gateway requests it and strips it from the answer).
IMAGE = "IMAGE"
LOGITS = "LOGITS"
RECON_ERROR = "RECON_ERROR"
SHADOW_LOGITS = "SHADOW_LOGITS"
INPUT_STATS = "INPUT_STATS"
DEFENSE_INPUTS = (LOGITS, RECON_ERROR, SHADOW_LOGITS, INPUT_STATS)
PROBS = "PROBS"
LABEL = "LABEL"
ACCOUNT_OUTPUT = "ACCOUNT_PVALUE"
# The request parameter that carries the account's tier from the gateway to the defense step.
ACCOUNT_PARAMETER = "same_account_state"

# The defense step's Prometheus counters (Triton's metrics endpoint); the histogram is
# SCORE_METRIC with the _bucket/_sum/_count suffixes.
SCORED_METRIC = "same_queries_scored_total"
FLAGGED_METRIC = "same_queries_flagged_total"
INVALID_METRIC = "same_requests_invalid_total"
FORCED_METRIC = "same_queries_suspected_account_total"
SCORE_METRIC = "same_score"

# The response policy a repository serves unless its config or the build says otherwise.
DEFAULT_POLICY = "misinformation"


def repository_path(repository: str | os.PathLike[str], relative: str) -> str:
    """``relative`` (one of the names above) inside ``repository``, as a native path."""
    return os.path.join(os.fspath(repository), *relative.split("/"))
