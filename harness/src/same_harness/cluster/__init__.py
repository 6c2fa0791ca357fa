"""``make cluster``: two Tritons and two gateways behind nginx, distributed Locust, faults.

- :mod:`.run`: the command line and the run; :mod:`.replicas`, :mod:`.balancer`: the
  processes and nginx in front of each tier; :mod:`.measure`, :mod:`.checks`,
  :mod:`.faults`, :mod:`.report`: the load, the cross-path checks, the faults and the report.
"""
