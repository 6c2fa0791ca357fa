"""The live check: the in-process pipeline the sweep uses answers as the served endpoint does."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .setup import Context


def grpc_check(ctx: Context, log_file: Path) -> dict:
    """Send a sample of every query source through the live endpoint and through the
    in-process pipeline with the served policy; report the largest difference."""
    from same_defense.export.repository import refresh_defense_code
    from same_defense.runtime.inprocess import InProcessSame
    from same_defense.serving.embedded import EmbeddedTriton
    from same_harness.data.queries import make_query_set

    from ..attacks import Dfme, GrpcOracle, InProcessOracle, Jbda, transfer_set

    config = ctx.config
    repo = Path(config.repository)
    refresh_defense_code(repo)  # the step runs the current core, as `make demo` does
    n = config.grpc_check
    sets = {
        "benign": ctx.splits.test.images[:n],
        "digits8x8": transfer_set("digits8x8", n, ctx.shape, config.seed + 1)[0],
        "natural": make_query_set("natural", n, ctx.shape, config.seed + 1),
        "noise": make_query_set("noise", n, ctx.shape, config.seed + 2),
    }
    server = EmbeddedTriton.on_free_ports(repo, log_file)
    reference = InProcessSame(repo)
    report: dict = {"policy": reference.settings.policy, "queries_per_set": n, "sets": {}}
    start = time.perf_counter()
    with server:
        transcripts = {}
        # Adaptive attacks run live (small budgets): their answers depend on earlier answers.
        trainer = ctx.trainer()
        for name, attack in (
            ("jbda", Jbda(ctx.jbda_seeds()[: max(1, n // 4)], rounds=3)),
            ("dfme", Dfme(ctx.shape, replay=False)),
        ):
            with GrpcOracle(server.grpc_url, budget=n) as live:
                attack.run(live, trainer, "probs")
                transcripts[f"{name}-live"] = (live.queries, live.answers)
        for name, images in sets.items():
            with GrpcOracle(server.grpc_url, budget=len(images)) as live:
                transcripts[name] = (images, live.query(images))
    for name, (images, remote) in transcripts.items():
        local = InProcessOracle(reference).query(images)
        report["sets"][name] = {
            "queries": int(len(images)),
            "max_abs_prob_diff": float(np.abs(remote.probs - local.probs).max()),
            "label_agreement": float((remote.labels == local.labels).mean()),
        }
    report["time_s"] = round(time.perf_counter() - start, 1)
    report["max_abs_prob_diff"] = max(s["max_abs_prob_diff"] for s in report["sets"].values())
    report["min_label_agreement"] = min(s["label_agreement"] for s in report["sets"].values())
    report["queries_total"] = sum(s["queries"] for s in report["sets"].values())
    return report
