"""Bring your own victim: serve a provider's classifier behind SAME instead of one we train.

The served victim graph always reads the project's convention (float32 NCHW pixels in [0, 1],
RGB for 3 channels) as ``IMAGE`` and answers logits as ``LOGITS``: the reconstructor, the
defense step and every client share that convention. A provider's model usually wants
something else (0-255 pixels, ImageNet mean/std, BGR, NHWC, softmax outputs), so we put its
preprocessing *inside* the served graph, in this order::

    x in [0, 1], RGB, NCHW
    -> x * scale                       --victim-scale
    -> channels reversed if bgr        --victim-channel-order
    -> (x - mean) / std, per channel   --victim-mean / --victim-std (in the model's channel order)
    -> NHWC if asked                   --victim-layout
    -> provided model
    -> log(max(p, tiny)) if probs      --victim-output (the score and misinformation read logits)

One graph means one Triton model and no extra ensemble step. An ONNX victim is wrapped node by
node (its own graph untouched inside); a PyTorch victim is wrapped in a module and exported
with the project's :func:`export_onnx`. Either way the result is checked on the provider's
test images before anything is trained on its answers.

The parts, one module each (this module re-exports their public names):

- :mod:`.victim_spec`: the preprocessing spec, the victim options, what the build records;
- :mod:`.victim_cli`: the victim and shadow options of ``same-build``;
- :mod:`.onnx_victim_checks`: loading a provided ONNX file, choosing and checking its IO;
- :mod:`.onnx_names`: tensor names in an ONNX graph (listing, renaming, fresh ones);
- :mod:`.onnx_victim_wrap`: the graph surgery around an ONNX victim;
- :mod:`.torch_victim`: the ``MODULE:FACTORY`` path for a PyTorch victim;
- :mod:`.victim_checks`: the served graph run on the data (shape, batching, NaN, accuracy).
"""

from __future__ import annotations

from .onnx_names import FreshNames, rename_tensor, tensor_names
from .onnx_victim_checks import (
    MIN_OPSET,
    check_declared_input,
    choose_io,
    graph_inputs,
    load_onnx_model,
    pick_tensor,
)
from .onnx_victim_wrap import import_onnx_victim, wrap_onnx_victim
from .torch_victim import (
    PreprocessedClassifier,
    export_torch_victim,
    import_torch_victim,
    load_state_dict,
    load_torch_factory,
)
from .victim_checks import (
    chance_warning,
    check_victim_graph,
    onnx_logits,
    victim_answers,
    warn_if_near_chance,
)
from .victim_cli import (
    SHADOW_CHOICES,
    add_victim_arguments,
    choose_shadow_architecture,
    parse_channel_values,
    victim_arguments_problem,
    victim_options,
)
from .victim_spec import (
    CHANNEL_ORDERS,
    IMAGE,
    LAYOUTS,
    LOGITS,
    OUTPUT_KINDS,
    PROB_FLOOR,
    PreparedVictim,
    Preprocessing,
    VictimOptions,
    trained_victim_source,
)

__all__ = [
    "CHANNEL_ORDERS",
    "IMAGE",
    "LAYOUTS",
    "LOGITS",
    "MIN_OPSET",
    "OUTPUT_KINDS",
    "PROB_FLOOR",
    "SHADOW_CHOICES",
    "FreshNames",
    "PreparedVictim",
    "PreprocessedClassifier",
    "Preprocessing",
    "VictimOptions",
    "add_victim_arguments",
    "chance_warning",
    "check_declared_input",
    "check_victim_graph",
    "choose_io",
    "choose_shadow_architecture",
    "export_torch_victim",
    "graph_inputs",
    "import_onnx_victim",
    "import_torch_victim",
    "load_onnx_model",
    "load_state_dict",
    "load_torch_factory",
    "onnx_logits",
    "parse_channel_values",
    "pick_tensor",
    "rename_tensor",
    "tensor_names",
    "trained_victim_source",
    "victim_answers",
    "victim_arguments_problem",
    "victim_options",
    "warn_if_near_chance",
    "wrap_onnx_victim",
]
