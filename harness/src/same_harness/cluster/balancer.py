"""nginx from Debian as a gRPC load balancer on loopback, run without touching /etc/nginx.

One nginx process serves any number of *tiers*: a tier is an HTTP/2 (h2c) listener that
round-robins gRPC calls over a list of backends (``grpc_pass``) with nginx's passive health
checks: a backend that refuses a connection or resets a call is marked down for
``fail_timeout_s`` (``max_fails``), and the call goes to the next backend
(``grpc_next_upstream``) within ``tries`` attempts. ``non_idempotent`` is on because every
gRPC call is a POST to nginx; here every call is a read or an inference, so sending one again
is safe (the gateway's account test skips a repeated image: a retried batch does not count
twice).

nginx cannot retry a call that already failed *inside* a healthy backend (a gRPC error is an
HTTP 200 with a status trailer), only calls whose backend could not be reached or died before
answering: exactly the crash and restart cases.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class BalancerError(RuntimeError):
    """nginx is missing or did not start."""


@dataclass(frozen=True)
class Tier:
    """One listener and the backends it balances (``host:port`` each)."""

    name: str
    listen: str
    backends: tuple[str, ...]
    max_fails: int = 1
    fail_timeout_s: int = 3
    tries: int = 3  # first attempt + retries on other backends
    read_timeout_s: int = 60


def _conf_tier(t: Tier) -> str:
    servers = "\n".join(
        f"        server {b} max_fails={t.max_fails} fail_timeout={t.fail_timeout_s}s;"
        for b in t.backends
    )
    return f"""
    upstream {t.name} {{
{servers}
        keepalive 32;
    }}
    server {{
        listen {t.listen} http2;
        location / {{
            grpc_pass grpc://{t.name};
            grpc_next_upstream error timeout non_idempotent;
            grpc_next_upstream_tries {t.tries};
            grpc_connect_timeout 2s;
            grpc_read_timeout {t.read_timeout_s}s;
            grpc_send_timeout {t.read_timeout_s}s;
        }}
    }}
"""


def render_config(prefix: Path, tiers: list[Tier], user: str | None = None) -> str:
    """nginx.conf whose every path (pid, logs, temp files) is under ``prefix``."""
    user_line = f"user {user};\n" if user else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# written by same_harness.cluster.balancer
{user_line}worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log {prefix / "access.log"} combined;
{temp}
    # A batch of 256 28x28 images is 800 KB; the gateway refuses over 64 MiB itself.
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    http2_max_concurrent_streams 1024;
{"".join(_conf_tier(t) for t in tiers)}}}
"""


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    raise BalancerError("nginx is not installed: `make system-deps` (apt-get install nginx-light)")


@dataclass
class Nginx:
    """A private nginx: its own prefix, config, pid and logs; stops with :meth:`stop`."""

    prefix: Path
    tiers: list[Tier]
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def config_path(self) -> Path:
        return self.prefix / "nginx.conf"

    def start(self, timeout_s: float = 10.0) -> Nginx:
        binary = nginx_binary()
        self.prefix.mkdir(parents=True, exist_ok=True)
        user = None
        if os.geteuid() == 0:
            # As root nginx switches its workers to an unprivileged user, which must be able
            # to write its temp folders; as anyone else it runs as that user throughout.
            user = "nobody nogroup"
            self.prefix.chmod(0o755)
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            path = self.prefix / "temp" / kind
            path.mkdir(parents=True, exist_ok=True)
            if user:
                path.chmod(0o777)
                path.parent.chmod(0o755)
        self.config_path.write_text(render_config(self.prefix, self.tiers, user))
        # The same prefix, error log and config for the syntax check and the run.
        nginx = [binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        nginx += ["-c", str(self.config_path)]
        test = subprocess.run([*nginx, "-t", "-q"], capture_output=True, text=True)
        if test.returncode != 0:
            raise BalancerError(f"nginx refused {self.config_path}:\n{test.stderr.strip()}")
        # daemon off: nginx stays our child, so stop() and a crash of this process end it.
        with open(self.prefix / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(
                [*nginx, "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        pending = [t.listen for t in self.tiers]
        while pending and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BalancerError(f"nginx exited at start: {self.error_log_tail()}")
            host, _, port = pending[0].rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                pending.pop(0)
            except OSError:
                time.sleep(0.05)
        if pending:
            self.stop()
            raise BalancerError(f"nginx does not listen on {pending}: {self.error_log_tail()}")
        return self

    def error_log_tail(self, lines: int = 10) -> str:
        path = self.prefix / "error.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(empty error log)"

    def upstream_errors(self) -> list[str]:
        """Error-log lines where nginx gave up on a backend or moved a call on (passive checks)."""
        path = self.prefix / "error.log"
        if not path.exists():
            return []
        keys = ("upstream", "no live upstreams")
        return [
            line
            for line in path.read_text(errors="replace").splitlines()
            if any(k in line for k in keys)
        ]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGQUIT)  # graceful: finish calls in flight
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
