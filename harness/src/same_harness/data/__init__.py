"""Images that are not the defender's data: what thieves and drifting customers send.

- :mod:`.queries`: noise, upscaled 8x8 digits, natural-photo crops (``make_query_set``);
- :mod:`.lookalike`: digits rendered from fonts and stroke templates (look-alike thieves);
- :mod:`.shifts`: blur, stroke width, contrast, noise, ... at several strengths (drifted
  honest customers), and perturbed photo copies.
"""
