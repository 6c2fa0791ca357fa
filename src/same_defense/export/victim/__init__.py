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

The parts, one module each:

- :mod:`.spec`: the preprocessing spec, the victim options, what the build records;
- :mod:`.arguments`: the victim and shadow options of ``same-build``;
- :mod:`.onnx_io`: loading a provided ONNX file, choosing and checking its IO;
- :mod:`.onnx_names`: tensor names in an ONNX graph (listing, renaming, fresh ones);
- :mod:`.onnx_wrap`: the graph surgery around an ONNX victim;
- :mod:`.torch_wrap`: the ``MODULE:FACTORY`` path for a PyTorch victim;
- :mod:`.checks`: the served graph run on the data (shape, batching, NaN, accuracy).
"""
