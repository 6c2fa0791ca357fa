"""What the account layer costs the gateway per request, measured in-process.

Served latencies through a gateway move by milliseconds from run to run on a shared 2-core
machine, which hides a sub-millisecond cost; this times the very functions the gateway runs
for one ``ModelInfer`` (authentication, request rewrite, response strip, and with accounts
the state read and the CUSUM update) on realistic messages, with and without the account
layer, and reports the medians. ``make bench`` writes the figures to ``reports/bench.json``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2

from same_defense.accounts import AccountService, KeyStore, MemoryStore, RedisStore
from same_defense.core.accounts import ACCOUNT_OUTPUT_WIDTH, AccountSettings
from same_defense.core.layout import ACCOUNT_OUTPUT
from same_defense.gateway.accounting import Authenticator, finish_infer, prepare_infer


def _messages(batch: int, shape: tuple[int, ...], classes: int, rng) -> tuple[bytes, bytes]:
    request = service_pb2.ModelInferRequest(model_name="same")
    request.inputs.add(name="IMAGE", datatype="FP32", shape=[batch, *shape])
    request.raw_input_contents.append(rng.random((batch, *shape), dtype=np.float32).tobytes())
    response = service_pb2.ModelInferResponse(model_name="same")
    for name, dtype, width, data in (
        ("PROBS", "FP32", classes, rng.random((batch, classes), dtype=np.float32)),
        ("LABEL", "INT64", 1, np.zeros((batch, 1), np.int64)),
        (
            ACCOUNT_OUTPUT,
            "FP32",
            ACCOUNT_OUTPUT_WIDTH,
            rng.random((batch, ACCOUNT_OUTPUT_WIDTH), dtype=np.float32),
        ),
    ):
        response.outputs.add(name=name, datatype=dtype, shape=[batch, width])
        response.raw_output_contents.append(data.tobytes())
    return request.SerializeToString(), response.SerializeToString()


def account_layer_cost(
    batch_sizes: list[int],
    shape: tuple[int, ...] = (1, 28, 28),
    classes: int = 10,
    repeats: int = 2000,
    redis_url: str | None = None,
) -> dict:
    """Median µs per request of the gateway's per-request work: keys only, with accounts in
    memory, and (given ``redis_url``) with accounts in Redis (two round trips per request)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        keys = KeyStore(Path(tmp) / "keys.json")
        metadata = (("authorization", f"Bearer {keys.add('bench')}"),)
        auth = Authenticator(keys=keys)
        services = {"with_accounts": AccountService(AccountSettings(), MemoryStore())}
        if redis_url:
            services["with_accounts_redis"] = AccountService(
                AccountSettings(), RedisStore(redis_url, prefix=f"bench:{time.time_ns()}")
            )
        report: dict = {}
        for batch in batch_sizes:
            # fresh images each time, so every query enters the test (the costly path)
            pairs = [_messages(batch, shape, classes, rng) for _ in range(16)]
            timings: dict[str, list[float]] = {"keys_only": [], **{k: [] for k in services}}
            for i in range(repeats):
                request, response = pairs[i % len(pairs)]
                for mode, times in timings.items():
                    start = time.perf_counter()
                    account = auth.account(metadata, "ipv4:127.0.0.1:1")
                    service = services.get(mode)
                    tier = service.tier(account) if service is not None else ""
                    prepared = prepare_infer(request, tier)
                    _, pvalues = finish_infer(response)
                    if service is not None:
                        service.record(account, pvalues, prepared.hashes)
                    times.append((time.perf_counter() - start) * 1e6)
            medians = {k: round(statistics.median(v), 1) for k, v in timings.items()}
            for mode in services:
                medians[f"added_{mode}"] = round(medians[mode] - medians["keys_only"], 1)
            report[str(batch)] = medians
    return {"unit": "microseconds per request (median, CPU-bound, one thread)", **report}
