"""The harness of same-defense: what attacks the served defense and measures it.

Nothing here is needed to serve; a provider's hosts install ``same-defense`` alone. Layers,
lowest first (each imports only the ones below it and the product, ``same_defense``):

- ``reporting``, ``data``: markdown tables and the cost block; the attacker's query sources,
  look-alike digits and the honest customers' shifted images;
- ``attacks``: model-extraction attacks, each with a query budget and an oracle to query;
- ``evaluation``: attacks x defenses, the account-level sweeps, honest populations;
- ``load``: Locust load and what the benchmarks share (``make loadtest``, ``make soak``);
- ``bench``, ``cluster``: ``make bench``/``make variants``/``make gpu-check``; ``make cluster``;
- ``demo``, ``docs``: ``make demo``, the quick start's main job; ``make docs``, the results page.
"""

__version__ = "0.1.0"
