"""The bench's targets and a worker factory for each: Triton, gateways, in-process graphs.

- ``SERVED``: a gRPC client of Triton, one per worker;
- ``GATEWAY``: the same client against a gateway process started here in front of Triton;
- ``IN_PROCESS``: the ONNX graphs in onnxruntime in this process (the compute floor).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..load.gateways import GatewayProcess, bench_key
from .closed_loop import Worker

SERVED = ("same", "victim")
GATEWAY = ("gateway_same", "gateway_same_keys_only")
IN_PROCESS = ("inprocess_same", "inprocess_victim")
TARGETS = SERVED + GATEWAY + IN_PROCESS


def triton_worker(url: str, model: str, timeout_s: float = 120.0, key: str | None = None) -> Worker:
    """One gRPC client per worker (tritonclient's clients are not meant to be shared)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    headers = {"authorization": f"Bearer {key}"} if key else None

    def call(batch: np.ndarray) -> object:
        tensor = grpcclient.InferInput("IMAGE", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return client.infer(model, [tensor], client_timeout=timeout_s, headers=headers)

    return call, client.close


def in_process_workers(repository: Path, threads: int) -> dict[str, Callable[[], Worker]]:
    """Worker factories for the in-process targets; sessions are shared (onnxruntime's run is
    thread-safe and releases the GIL), as a server's instance would be."""
    from same_defense.runtime.inprocess import InProcessSame

    pipeline = InProcessSame(repository, threads=threads)
    victim = pipeline.graphs.victim

    def nothing() -> None:
        pass

    return {
        "inprocess_same": lambda: (pipeline.infer, nothing),
        "inprocess_victim": lambda: (lambda x: victim.run(None, {"IMAGE": x}), nothing),
    }


def start_gateways(
    targets: list[str], url: str, repository: Path, running: list[GatewayProcess]
) -> dict[str, Callable[[], Worker]]:
    """Start one gateway per target in front of ``url`` (appended to ``running`` as they start,
    so the caller stops them even if a later one fails); their worker factories."""
    keys_file = Path(tempfile.mkdtemp(prefix="same-bench-keys-")) / "keys.json"
    key = bench_key(keys_file)
    factories: dict[str, Callable[[], Worker]] = {}
    for target in targets:
        gateway = GatewayProcess(
            url, repository, keys_file, account_defense=target == "gateway_same"
        )
        # The bench calls gRPC only; the gateway's default HTTP port (8000) is shared by both
        # gateways here and by anything else on the machine.
        if "--no-http" not in gateway.command:
            gateway.command.append("--no-http")
        gateway.start(key)
        running.append(gateway)
        factories[target] = lambda u=gateway.url: triton_worker(u, "same", key=key)
    return factories


def worker_factories(
    targets: list[str],
    url: str | None,
    repository: Path,
    inprocess_threads: int,
    running: list[GatewayProcess],
) -> dict[str, Callable[[], Worker]]:
    """Worker factories for ``targets``: gRPC clients of Triton at ``url``, gateways started in
    front of it (appended to ``running``, for the caller to stop), the in-process graphs."""
    factories: dict[str, Callable[[], Worker]] = {
        t: (lambda t=t: triton_worker(url, t)) for t in targets if t in SERVED
    }
    gateways = [t for t in targets if t in GATEWAY]
    if gateways:
        factories.update(start_gateways(gateways, url, repository, running))
    local = [t for t in targets if t in IN_PROCESS]
    if local:
        workers = in_process_workers(repository, inprocess_threads)
        factories.update({t: f for t, f in workers.items() if t in local})
    return factories
