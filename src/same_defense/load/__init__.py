"""Load generation and benchmarks for the served ensemble.

- :mod:`.stats`: percentile summaries and ratios (pure functions, unit-tested);
- :mod:`.bench`: ``make bench``, a closed-loop benchmark of ``same``, ``victim`` and the same
  graphs in-process;
- :mod:`.loadtest`: ``make loadtest``, serves the repository and runs Locust
  (``loadtest/locustfile.py``) headless against ``same`` and against ``victim``.
"""
