"""``same-serve``: serve a model repository until interrupted.

By default the public ports are the gateway's, gRPC (``--grpc-port``, 8001) and KServe v2
HTTP/REST (``--http-port``, 8000), which expose only the ``same`` ensemble (plus health and
metadata) to callers with a key; Triton itself listens on loopback, gRPC only (its HTTP is
closed), and demands a key only the gateway holds. ``--direct`` exposes Triton's own gRPC port
instead (development, benchmarks: then every loaded model, the raw victim included, is
callable over gRPC); Triton's HTTP stays closed in that mode too.

Waits until ``same`` is ready, prints the endpoints, logs to a file, and on Ctrl-C or SIGTERM
stops the server together with its Python stub processes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..cli_errors import CommandError, add_debug_argument, run_command, wants_debug
from ..core.layout import CONFIG_NAME, ENSEMBLE
from ..core.manifest import is_built
from ..gateway.options import add_account_arguments, options_from_args
from .embedded import EmbeddedTriton, ServerError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="same-serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="the built Triton repository to serve (relative to the working directory; "
        "default: model_repository)",
    )
    p.add_argument("--grpc-port", type=int, default=8001, help="public gRPC port")
    http = p.add_mutually_exclusive_group()
    http.add_argument(
        "--http-port", type=int, default=8000, help="public KServe v2 HTTP port (the gateway's)"
    )
    http.add_argument("--no-http", action="store_true", help="no public HTTP port (gRPC only)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics")
    p.add_argument("--host", default="127.0.0.1", help="address of the public ports")
    p.add_argument(
        "--direct",
        action="store_true",
        help="no gateway: expose Triton's own gRPC (every model; no HTTP)",
    )
    p.add_argument("--log-file", type=Path, default=Path("logs/tritonserver.log"))
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.add_argument(
        "--gateway-metrics-port", type=int, default=8003, help="gateway's Prometheus (loopback)"
    )
    add_account_arguments(p)
    add_debug_argument(p)
    return p.parse_args(argv)


def check_repository(repository: Path) -> None:
    """CommandError naming both fixes when ``repository`` holds no built ``same`` ensemble."""
    built = (repository / ENSEMBLE / CONFIG_NAME).exists() and is_built(repository)
    if not built:
        raise CommandError(
            f"no built model repository at {repository}: point --repository at one, or build "
            "it first (`make repository`, or same-build --repository PATH for your own model)"
        )


def main(argv: list[str] | None = None) -> int:
    """Run ``same-serve``; a refusal is one line on stderr (the traceback with --debug)."""
    args = parse_args(argv)
    return run_command("same-serve", lambda: serve(args), wants_debug(argv))


def serve(args: argparse.Namespace) -> int:
    check_repository(args.repository)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.direct:
        # No key exists in this mode, so an HTTP port could not be locked: keep it closed.
        service = EmbeddedTriton(
            args.repository,
            grpc_port=args.grpc_port,
            allow_http=False,
            metrics_port=args.metrics_port,
            log_file=args.log_file,
            host=args.host,
        )
    else:
        from .deployment import ProtectedService

        service = ProtectedService(
            args.repository,
            public_host=args.host,
            public_port=args.grpc_port,
            http_port=None if args.no_http else args.http_port,
            metrics_port=args.metrics_port,
            log_file=args.log_file,
            accounts=options_from_args(args),
            gateway_metrics_port=args.gateway_metrics_port,
        )
    if not args.direct and not args.anonymous and not args.keys.exists():
        print(
            f"same-serve: note: no key file at {args.keys}: every call will be refused "
            "(UNAUTHENTICATED). Add a key with `same-accounts add NAME`, or use --anonymous.",
            file=sys.stderr,
        )
    try:
        service.start(args.timeout)
    except (ServerError, OSError) as exc:
        print(f"same-serve: error: {exc}", file=sys.stderr)
        return 1
    triton = service if args.direct else service.triton
    if args.direct:
        public = f"gRPC {triton.grpc_url} (Triton directly: every model callable; no HTTP)"
    else:
        http = f", HTTP {service.http_url}" if service.http_url else ""
        public = f"gRPC {service.public_url}{http} (gateway: `same` only)"
        if service.gateway is not None and service.gateway.admin is not None:
            public += f"; admin API {service.gateway.admin.url} (same-accounts)"
    print(
        f"serving {args.repository}: public {public}; "
        f"metrics {triton.metrics_url}; log {args.log_file}. Ctrl-C stops.",
        flush=True,
    )
    try:
        while not stop.wait(1.0):
            if triton.process is None or triton.process.poll() is not None:
                print(f"same-serve: tritonserver exited; see {args.log_file}", file=sys.stderr)
                return 1
    finally:
        service.stop()
        print("same-serve: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
