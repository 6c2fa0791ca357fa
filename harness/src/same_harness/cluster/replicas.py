"""Several Triton servers and gateways on one machine, behind nginx, sharing one Redis.

    clients --gRPC--> nginx :public (round robin, passive health checks)
                        |-> gateway 0 --+                      +-> Triton 0 (own workdir, ports)
                        +-> gateway 1 --+-> nginx :internal ---+-> Triton 1
                              |                                   (same repository, same key)
                              +---- Redis (account state of every gateway)

Each tier is what a Kubernetes Service gives the deployment in ``deploy/k8s``: the gateways
reach "the Triton service", not one server, so a dead Triton costs a retry, not an outage of
the gateway in front of it. Every Triton demands the same restricted-protocol key, which only
the gateways know. Each gateway is its own process (its own GIL, killable on its own).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from same_defense.accounts.local_redis import LocalRedis
from same_defense.core.manifest import manifest_path
from same_defense.ports import free_port
from same_defense.serving.deployment import KEY_HEADER
from same_defense.serving.embedded import EmbeddedTriton

from .balancer import Nginx, Tier


class ClusterError(RuntimeError):
    """A part of the one-machine cluster did not start."""


@dataclass
class GatewayReplica:
    """``same-gateway`` as a child process on a fixed port (a restart keeps the port, so the
    balancer's config stays valid, as a pod keeps its Service)."""

    index: int
    upstream: str
    upstream_key: tuple[str, str]
    manifest: Path
    keys_file: Path
    redis_url: str
    log_file: Path
    on_store_error: str = "closed"
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        key, value = self.upstream_key
        return [
            sys.executable,
            "-m",
            "same_defense.gateway.cli",
            "--listen",
            self.url,
            "--no-http",
            # one admin port and audit file per host by default: several replicas share it
            "--no-admin",
            "--no-audit-log",
            "--upstream",
            self.upstream,
            "--upstream-key",
            f"{key}={value}",
            "--manifest",
            str(self.manifest),
            "--keys",
            str(self.keys_file),
            "--redis",
            self.redis_url,
            "--on-store-error",
            self.on_store_error,
            "--metrics-port",
            str(self.metrics_port),
        ]

    def start(self, probe_key: str, timeout_s: float = 60.0) -> GatewayReplica:
        """Start and wait until ``same`` is ready through it (``probe_key``: any valid key)."""
        import tritonclient.grpc as grpcclient

        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        headers = {"authorization": f"Bearer {probe_key}"}
        deadline = time.monotonic() + timeout_s
        with grpcclient.InferenceServerClient(self.url) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    if client.is_model_ready("same", headers=headers):
                        return self
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
        self.stop()
        raise ClusterError(f"gateway {self.index} did not become ready; see {self.log_file}")

    def kill(self) -> None:
        """SIGKILL: a crash, no graceful shutdown."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def gateway_counter(metrics_url: str, name: str = "same_gateway_requests_total") -> float:
    """Sum of one counter over its labels on a gateway's metrics page (0 when unreachable)."""
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Cluster:
    """Redis, ``tritons`` servers, ``gateways`` gateway processes and nginx, on loopback."""

    repository: Path
    workdir: Path
    keys_file: Path
    probe_key: str  # a key in keys_file, used for readiness checks
    tritons: int = 2
    gateways: int = 2
    on_store_error: str = "closed"
    # False with one server and one gateway: the single-server deployment (gateway straight
    # to Triton, no nginx), the baseline the replicated one is measured against.
    balanced: bool = True
    redis: LocalRedis | None = None
    servers: list[EmbeddedTriton] = field(default_factory=list)
    replicas: list[GatewayReplica] = field(default_factory=list)
    balancer: Nginx | None = None
    public_port: int = field(default_factory=free_port)
    internal_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        """The public endpoint (nginx in front of the gateways, or the lone gateway)."""
        if not self.balanced:
            return self.replicas[0].url
        return f"127.0.0.1:{self.public_port}"

    @property
    def manifest(self) -> Path:
        return Path(manifest_path(self.repository))

    def start(self, timeout_s: float = 180.0) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        self.redis = LocalRedis(self.workdir / "redis").start()
        key = (KEY_HEADER, secrets.token_hex(16))
        self.servers = [
            EmbeddedTriton(
                self.repository,
                grpc_port=free_port(),
                metrics_port=free_port(),
                allow_http=False,
                log_file=self.workdir / f"triton-{i}.log",
                workdir=self.workdir / f"triton-{i}",
                restricted_key=key,
            )
            for i in range(self.tritons)
        ]
        # Loading is mostly waiting on Python stubs: start the servers side by side.
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda s: s.start(timeout_s), self.servers))
        if not self.balanced and (self.tritons, self.gateways) != (1, 1):
            raise ClusterError("balanced=False is the one-server, one-gateway deployment")
        internal = Tier(
            "tritons", f"127.0.0.1:{self.internal_port}", tuple(s.grpc_url for s in self.servers)
        )
        upstream = internal.listen if self.balanced else self.servers[0].grpc_url
        self.replicas = [
            GatewayReplica(
                i,
                upstream,
                key,
                self.manifest,
                self.keys_file,
                self.redis.url,
                self.workdir / f"gateway-{i}.log",
                self.on_store_error,
            )
            for i in range(self.gateways)
        ]
        if self.balanced:
            public = Tier("gateways", self.url, tuple(g.url for g in self.replicas))
            # nginx first: the gateways' readiness checks go through its internal tier.
            self.balancer = Nginx(self.workdir / "nginx", [public, internal]).start()
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(lambda g: g.start(self.probe_key), self.replicas))

    # Faults -----------------------------------------------------------------------------

    def kill_triton(self, i: int) -> None:
        """SIGKILL the server's whole process group (server and its Python stubs)."""
        server = self.servers[i]
        if server.supervisor is not None:  # it would try to reload models of a dead server
            server.supervisor.stop()
        if server.process is not None:
            try:
                os.killpg(server.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.stop()

    def restart_triton(self, i: int, timeout_s: float = 180.0) -> float:
        """Start server ``i`` again on its ports; returns the seconds until it was ready."""
        start = time.monotonic()
        self.servers[i].start(timeout_s)
        return time.monotonic() - start

    def kill_gateway(self, i: int) -> None:
        self.replicas[i].kill()

    def restart_gateway(self, i: int) -> float:
        start = time.monotonic()
        self.replicas[i].start(self.probe_key)
        return time.monotonic() - start

    def restart_gateways(self, on_store_error: str) -> None:
        """Every gateway again with another ``--on-store-error`` (same ports)."""
        self.on_store_error = on_store_error
        for g in self.replicas:
            g.stop()
            g.on_store_error = on_store_error
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(lambda g: g.start(self.probe_key), self.replicas))

    def pids(self) -> dict[str, list[int]]:
        """Process ids by component (Triton pids stand for their stub children too)."""
        out: dict[str, list[int]] = {
            "triton": [s.process.pid for s in self.servers if s.process is not None],
            "gateway": [g.process.pid for g in self.replicas if g.process is not None],
        }
        if self.balancer is not None and self.balancer.process is not None:
            out["nginx"] = [self.balancer.process.pid]
        if self.redis is not None and self.redis.process is not None:
            out["redis"] = [self.redis.process.pid]
        return out

    def requests_per_gateway(self) -> list[float]:
        """Inference requests each gateway answered (its own counter, since its last start)."""
        return [gateway_counter(g.metrics_url) for g in self.replicas]

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for g in self.replicas:
            g.stop()
        for s in self.servers:
            s.stop()
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
