"""Fault injection for ``make cluster``: kill and restart a Triton and a gateway under load.

:func:`fault_schedule` runs alongside the fault run (kills, restarts, a timeline of who
served, honest clients that retry); :func:`rejoined` reads from the timeline whether the
restarted processes served again.
"""

from __future__ import annotations

import threading
import time

from .checks import HonestClients
from .measure import triton_requests
from .replicas import Cluster


def fault_schedule(
    cluster: Cluster,
    kill_triton_at: float,
    kill_gateway_at: float,
    down_s: float,
    honest: HonestClients,
):
    """What runs alongside the fault run: the kills, restarts, a timeline of who served, and
    honest clients that retry as ``SameClient`` does."""

    def run(t0: float) -> dict:
        honest.start()
        events: list[dict] = []
        timeline: list[list[float]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                row = [round(time.monotonic() - t0, 1)]
                row += cluster.requests_per_gateway()
                row += [triton_requests(s.metrics_url) for s in cluster.servers]
                timeline.append(row)
                stop.wait(2.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def at(t: float) -> None:
            time.sleep(max(0.0, t0 + t - time.monotonic()))

        def event(what: str, **extra) -> None:
            events.append({"t_s": round(time.monotonic() - t0, 1), "event": what, **extra})

        at(kill_triton_at)
        cluster.kill_triton(0)
        event("SIGKILL triton 0 (server and stubs)")
        time.sleep(down_s)
        event("restart triton 0", ready_after_s=round(cluster.restart_triton(0), 1))
        at(kill_gateway_at)
        cluster.kill_gateway(0)
        event("SIGKILL gateway 0")
        time.sleep(down_s)
        event("restart gateway 0", ready_after_s=round(cluster.restart_gateway(0), 1))
        time.sleep(8.0)  # let the restarted ones take traffic before the run ends
        stop.set()
        sampler.join(10)
        return {
            "honest_clients_with_retries": honest.stop(),
            "events": events,
            "timeline_columns": ["t_s"]
            + [f"gateway_{i}_requests" for i in range(len(cluster.replicas))]
            + [f"triton_{i}_requests_since_start" for i in range(len(cluster.servers))],
            "timeline": timeline,
        }

    return run


def rejoined(faults: dict) -> dict:
    """Did the restarted Triton 0 and gateway 0 serve after their restarts? (their counters
    start at 0 again, so any growth after the restart event is their traffic)."""
    ev = {e["event"]: e["t_s"] for e in faults["events"]}
    rows = faults["timeline"]
    n_gw = sum(c.startswith("gateway_") for c in faults["timeline_columns"])

    def grew(col: int, after: float) -> bool:
        values = [r[col] for r in rows if r[0] > after]
        return len(values) >= 2 and values[-1] > values[0]

    return {
        "triton_0_served_after_restart": grew(1 + n_gw, ev["restart triton 0"]),
        "gateway_0_served_after_restart": grew(1, ev["restart gateway 0"]),
    }
