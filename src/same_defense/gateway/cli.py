"""``same-gateway``: run the gateway alone in front of any Triton (e.g. the NGC container).

    same-gateway --listen 0.0.0.0:8001 --http-listen 0.0.0.0:8000 \\
        --upstream 127.0.0.1:8101 --upstream-key same-gateway-key=SECRET \\
        --manifest model_repository/defense/1/MANIFEST \\
        --keys accounts/keys.json --redis redis://127.0.0.1:6379/0

Public gRPC on ``--listen`` and KServe v2 HTTP/REST on ``--http-listen`` (same rules on
both; ``--no-http`` for gRPC only). The gateway reaches Triton over gRPC only: run Triton with
``--allow-http=false`` (or ``--http-restricted-api`` with the key). ``--upstream-key`` when
Triton runs ``--grpc-restricted-protocol``; ``--manifest`` (the repository's manifest,
``core.layout.MANIFEST_FILE``) turns the account-level defense on (its calibration);
``--redis`` shares account state between gateways.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from ..cli_errors import CommandError, add_debug_argument, run_command, wants_debug
from ..core.layout import MANIFEST_FILE
from ..core.manifest import ManifestError, read_manifest_file
from .options import add_account_arguments, options_from_args
from .proxy import GatewayServer
from .rules import GatewayPolicy


def main(argv: list[str] | None = None) -> int:
    """Run ``same-gateway``; a refusal is one line on stderr (the traceback with --debug)."""
    return run_command("same-gateway", lambda: _run(argv), wants_debug(argv))


def _run(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="same-gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", default="0.0.0.0:8001", help="public gRPC host:port")
    http = p.add_mutually_exclusive_group()
    http.add_argument(
        "--http-listen", default="0.0.0.0:8000", help="public KServe v2 HTTP host:port"
    )
    http.add_argument("--no-http", action="store_true", help="serve gRPC only")
    p.add_argument("--upstream", default="127.0.0.1:8101", help="Triton's gRPC host:port")
    p.add_argument("--public-model", action="append", help="model clients may call (default: same)")
    p.add_argument(
        "--upstream-key",
        help="KEY=VALUE of Triton's --grpc-restricted-protocol (sent as triton-grpc-protocol-KEY)",
    )
    p.add_argument("--manifest", type=Path, help=f"the repository's manifest ({MANIFEST_FILE})")
    p.add_argument("--metrics-port", type=int, help="gateway's Prometheus metrics port")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics port (0.0.0.0 in a pod, for Prometheus; no sidecar)",
    )
    add_account_arguments(p)
    add_debug_argument(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    header = None
    if args.upstream_key:
        key, sep, value = args.upstream_key.partition("=")
        if not sep:
            p.error("--upstream-key takes KEY=VALUE")
        header = (f"triton-grpc-protocol-{key}", value)
    policy = GatewayPolicy(frozenset(args.public_model or ["same"]), upstream_header=header)
    options = options_from_args(args)
    try:
        manifest = read_manifest_file(args.manifest) if args.manifest else None
    except ManifestError as exc:
        raise CommandError(f"--manifest: {exc}") from None
    try:
        gateway = GatewayServer(
            args.listen,
            args.upstream,
            policy,
            metrics_port=args.metrics_port,
            http_listen=None if args.no_http else args.http_listen,
            metrics_host=args.metrics_host,
            **options.gateway_parts(manifest),
        ).start()
    except OSError as exc:
        print(f"same-gateway: error: {exc}", file=sys.stderr)
        return 1
    host = args.http_listen.rpartition(":")[0]
    http = "" if args.no_http else f", HTTP {host}:{gateway.http_port}"
    admin = f"; admin API {gateway.admin.url}" if gateway.admin is not None else ""
    print(
        f"same-gateway: gRPC {args.listen}{http} -> {args.upstream}, "
        f"public: {sorted(policy.public_models)}{admin}"
    )
    signal.signal(signal.SIGTERM, lambda *_: gateway.stop())
    try:
        gateway.wait()
    except KeyboardInterrupt:
        gateway.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
