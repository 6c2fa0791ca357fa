"""``same-serve``: run the embedded Triton server on a model repository until interrupted.

Waits until ``same`` is ready, prints the endpoints, logs to a file, and on Ctrl-C or
SIGTERM stops the server together with its Python stub processes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .embedded import EmbeddedTriton, ServerError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="same-serve",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--log-file", type=Path, default=Path("logs/tritonserver.log"))
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    args = p.parse_args(argv)
    server = EmbeddedTriton(
        args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
        metrics_port=args.metrics_port, log_file=args.log_file, host=args.host,
    )  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start(args.timeout)
    except ServerError as exc:
        print(f"same-serve: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"serving {args.repository}: gRPC {server.grpc_url}, HTTP {server.http_url}, "
        f"metrics {server.metrics_url}; log {args.log_file}. Ctrl-C stops.",
        flush=True,
    )
    try:
        while not stop.wait(1.0):
            if server.process is not None and server.process.poll() is not None:
                print(
                    f"same-serve: tritonserver exited ({server.process.returncode}); "
                    f"see {args.log_file}",
                    file=sys.stderr,
                )
                return 1
    finally:
        server.stop()
        print("same-serve: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
