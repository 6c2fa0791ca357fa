"""Checks of the replicated deployment that a load test cannot make: one account seen through
two gateways, and what both gateways do while Redis is away.

Each check talks to the gateways directly (not through nginx), so it knows which gateway
answered. Results are plain dicts for ``reports/cluster.json``.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from same_defense.accounts import RedisStore

from .replicas import Cluster


def classify(url: str, key: str, images: np.ndarray, timeout_s: float = 30.0) -> np.ndarray:
    """Labels for ``images`` from the gateway at ``url`` (raises InferenceServerException)."""
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("IMAGE", list(images.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        result = client.infer(
            "same", [tensor], headers={"authorization": f"Bearer {key}"}, client_timeout=timeout_s
        )
        return result.as_numpy("LABEL").reshape(-1)


def try_classify(url: str, key: str, images: np.ndarray) -> tuple[bool, str]:
    """(served, gRPC status or "OK")."""
    try:
        classify(url, key, images, timeout_s=15.0)
        return True, "OK"
    except InferenceServerException as exc:
        return False, str(exc.status() or exc.message())


def cross_path(
    cluster: Cluster,
    thief: str,
    thief_key: str,
    honest_key: str,
    attack: np.ndarray,
    benign: np.ndarray,
    batch: int = 16,
    max_batches: int = 40,
) -> dict:
    """A thief suspected through gateway 0 is answered with the policy through gateway 1.

    The thief sends ``attack`` batches to gateway 0 only, until Redis holds strong evidence
    against it (the graded response: reviewed first, the policy from about its 50th distinct
    query). Then the thief and an honest account send the same ``benign`` images to gateway
    1: under the misinformation policy every label the thief gets differs from the honest one.
    """
    first, second = cluster.replicas[0], cluster.replicas[1]
    store = RedisStore(cluster.redis.url)
    sent = 0
    for i in range(max_batches):
        classify(first.url, thief_key, attack[i * batch % len(attack) :][:batch])
        sent += 1
        if store.get(thief).strong_at_query > 0:  # 0: not (yet) answered with the policy
            break
    state = store.get(thief)
    suspected_before = _suspected_queries(second.metrics_url)
    honest = classify(second.url, honest_key, benign)
    answered = classify(second.url, thief_key, benign)
    return {
        "thief_batches_via_gateway_0": sent,
        "suspected_at_distinct_query": state.suspected_at_query,
        "thief_queries_recorded": state.queries,
        "benign_images_via_gateway_1": int(len(benign)),
        "labels_differing_from_honest": round(float(np.mean(answered != honest)), 4),
        # Gateway 1's own counter: the thief's images it answered as a suspected account.
        "gateway_1_suspected_queries": _suspected_queries(second.metrics_url) - suspected_before,
        "passed": bool(state.suspected_at_query > 0 and np.all(answered != honest)),
    }


def _suspected_queries(metrics_url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("same_gateway_queries_total{") and 'account_state="suspected"' in line
    )


def redis_outage(
    cluster: Cluster, key: str, images: np.ndarray, pause_s: float = 5.0, probe_every_s: float = 1.0
) -> dict:
    """Freeze Redis (SIGSTOP: every call times out, as with a partitioned or hung server;
    its data stay) for ``pause_s``, probing every gateway; then let it go and probe again."""
    pid = cluster.redis.process.pid
    during: list[list[tuple[bool, str]]] = [[] for _ in cluster.replicas]
    os.kill(pid, signal.SIGSTOP)
    try:
        end = time.monotonic() + pause_s
        while time.monotonic() < end:
            for i, g in enumerate(cluster.replicas):
                during[i].append(try_classify(g.url, key, images))
            time.sleep(probe_every_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(0.5)
    after = [try_classify(g.url, key, images) for g in cluster.replicas]
    return {
        "mode": cluster.on_store_error,
        "pause_s": pause_s,
        "during": [
            {
                "probes": len(p),
                "served": sum(ok for ok, _ in p),
                "statuses": sorted({s for _, s in p}),
            }
            for p in during
        ],
        "served_after": [ok for ok, _ in after],
    }


def outage_holds(result: dict) -> bool:
    """Closed: nothing served during the outage; open: everything served; both: all served
    after."""
    expect_served = result["mode"] == "open"
    during_ok = all(
        (g["served"] == g["probes"]) if expect_served else (g["served"] == 0)
        for g in result["during"]
    )
    return bool(during_ok and all(result["served_after"]))


class HonestClients:
    """Honest callers that retry as the project's client does (:class:`SameClient`: transient
    failures retried 3 times with backoff), one image per call, alongside a fault run.

    nginx moves a call to a surviving backend only while the dead one refused the connection;
    a call in flight inside a process killed with SIGKILL is answered 502/UNAVAILABLE (nginx
    streams gRPC request bodies, so it cannot send one again). The client's retry covers it.
    """

    def __init__(self, url: str, key: str, images: np.ndarray, threads: int = 2) -> None:
        self.url, self.key, self.images = url, key, images
        self.calls = 0
        self.failures: list[str] = []
        self.retried = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        from same_defense.client import SameClient

        with SameClient(self.url, api_key=self.key, retries=3, backoff_s=0.25) as client:
            i = 0
            while not self._stop.is_set():
                try:
                    client.classify(self.images[i % len(self.images)][None])
                except Exception as exc:  # counted: the check is that none happen
                    self.failures.append(str(exc)[:200])
                self.calls += 1
                i += 1
                self._stop.wait(0.05)
            self.retried += client.retried

    def start(self) -> HonestClients:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return {
            "calls": self.calls,
            "retried": self.retried,
            "failed": len(self.failures),
            "failures": self.failures[:5],
        }
