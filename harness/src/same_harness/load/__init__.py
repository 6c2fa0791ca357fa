"""Locust load against the served ensemble, and what the benchmarks share.

- :mod:`.common`: the built repository, its data, tuned copies, gateways on free ports;
- :mod:`.stats`: percentile summaries and ratios (pure functions, unit-tested);
- :mod:`.loadtest`: ``make loadtest``, Locust headless against ``same`` and ``victim``
  (``loadtest/locustfile.py``); :mod:`.soak`: ``make soak``; :mod:`.distributed`: Locust
  master and workers; :mod:`.under_attack`: ``make under-attack``, honest latency beside
  attackers; :mod:`.mix`: the user mix all of them send.
"""
