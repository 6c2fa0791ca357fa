"""Closed-loop benchmarks of the served ensemble (make bench, make variants, make gpu-check).

- :mod:`.run`: ``make bench``, ``same`` against ``victim`` and the same graphs in-process;
- :mod:`.closed_loop`, :mod:`.targets`, :mod:`.server_stats`: one cell's loop, what it
  calls, and the server's accounting of it; :mod:`.derive`: the ratios, goals and table;
- :mod:`.account_cost`: what the gateway's account layer costs per request;
- :mod:`.variants`: reconstructor variants, their CPU cost, AUROC and detection delay;
- :mod:`.gpu_check`: the GPU path end to end.
"""
