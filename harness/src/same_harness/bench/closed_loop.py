"""The closed loop of the bench: workers that send one request and wait for its answer.

A cell is ``concurrency`` such workers for a fixed window after a warm-up; a worker is
``(call, close)`` and :func:`closed_loop` summarises the requests answered in the window.
The workers themselves (per target) are made in :mod:`.targets`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from ..load.stats import latency_summary

# A worker is (call, close): call(batch) sends one request and waits for its answer.
MAX_ERRORS_IN_A_ROW = 20
Worker = tuple[Callable[[np.ndarray], object], Callable[[], None]]


def _send_until_closed(
    call: Callable[[np.ndarray], object],
    batches: list[np.ndarray],
    first: int,
    window: dict[str, float],
    latencies: list[float],
    errors: list[str],
) -> int:
    """One worker's loop: send, wait, record the latency of answers inside the window, until
    the window closes; returns the requests answered (warm-up included)."""
    k, in_a_row, answered = first, 0, 0
    while True:
        start = time.perf_counter()
        if start >= window["end"]:
            return answered
        try:
            call(batches[k % len(batches)])
        except Exception as exc:  # counted and reported, never silently dropped
            errors.append(f"{type(exc).__name__}: {exc}")
            in_a_row += 1
            if in_a_row >= MAX_ERRORS_IN_A_ROW:  # the target is gone: stop trying
                return answered
            continue
        end = time.perf_counter()
        in_a_row = 0
        k += 1
        answered += 1
        if window["start"] <= end <= window["end"]:
            latencies.append(end - start)


def closed_loop(
    make_worker: Callable[[], Worker],
    batches: list[np.ndarray],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> dict:
    """Run ``concurrency`` closed-loop workers; summarise requests that finish in the window.

    The window opens ``warmup_s`` after every worker is connected and lasts ``duration_s``.
    Requests that complete inside it count towards throughput and latency (their start may
    fall in the warm-up: at saturation that is what a request waits).
    """
    window: dict[str, float] = {}

    def open_window() -> None:  # runs once, when every worker has reached the barrier
        window["start"] = time.perf_counter() + warmup_s
        window["end"] = window["start"] + duration_s

    barrier = threading.Barrier(concurrency, action=open_window)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []  # one message per failed request (list.append is thread-safe)
    sent = [0] * concurrency

    def work(index: int) -> None:
        try:
            call, close = make_worker()
        except Exception as exc:
            errors.append(f"cannot start a worker: {type(exc).__name__}: {exc}")
            barrier.abort()  # the others would wait for this one for ever
            return
        try:
            barrier.wait()
            # Workers start at different batches so they do not send the same one.
            sent[index] = _send_until_closed(call, batches, index, window, latencies[index], errors)
        except threading.BrokenBarrierError:
            return
        finally:
            close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [x for per_worker in latencies for x in per_worker]
    if errors and not done:
        raise RuntimeError(f"every request failed ({len(errors)}); first: {errors[0]}")
    summary = latency_summary(done, duration_s, len(batches[0]))
    summary["errors"] = len(errors)
    if errors:
        summary["first_error"] = errors[0]
    summary["images_sent"] = sum(sent) * len(batches[0])  # warm-up included, for CPU accounting
    return summary


def make_batches(images: np.ndarray, batch_size: int, count: int = 16) -> list[np.ndarray]:
    """Up to ``count`` distinct contiguous batches cut from ``images`` (cycled if short)."""
    n = max(1, min(count, len(images) // batch_size))
    reps = -(-n * batch_size // len(images))
    pool = np.concatenate([images] * reps) if reps > 1 else images
    return [np.ascontiguousarray(pool[i * batch_size : (i + 1) * batch_size]) for i in range(n)]
