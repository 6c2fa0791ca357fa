"""Gateways in their own processes, for measurements that must not share the client's GIL.

``make bench`` puts two in front of its Triton: one with the account-level defense and one
with keys only, so the difference between their rows is what the account layer costs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from same_defense.accounts import KeyStore
from same_defense.core.manifest import manifest_path
from same_defense.ports import free_port


class GatewayProcess:
    def __init__(
        self,
        upstream: str,
        repository: Path,
        keys_file: Path,
        account_defense: bool = True,
        log_file: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        manifest = manifest_path(repository)
        self.command = [sys.executable, "-m", "same_defense.gateway.cli", "--listen", self.url]
        self.command += ["--upstream", upstream, "--keys", str(keys_file)]
        # The benchmark speaks gRPC: no public HTTP port (the default 0.0.0.0:8000 would
        # collide with a second gateway or anything else on the machine).
        self.command += ["--manifest", manifest, "--no-http"]
        # Nor the operator's admin API and audit trail: their default loopback port and file
        # are one per host, and a harness may run several gateways at once.
        self.command += ["--no-admin", "--no-audit-log"]
        if not account_defense:
            self.command.append("--no-account-defense")
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def start(self, key: str, timeout_s: float = 30.0) -> GatewayProcess:
        import tritonclient.grpc as grpcclient

        log = open(self.log_file, "w") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        with grpcclient.InferenceServerClient(self.url) as client:
            while time.monotonic() < deadline:
                try:
                    if client.is_model_ready("same", headers={"authorization": f"Bearer {key}"}):
                        return self
                except Exception:  # not listening yet
                    pass
                if self.process.poll() is not None:
                    break
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gateway {' '.join(self.command)} did not become ready")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


def bench_key(keys_file: Path) -> str:
    """A fresh key for the benchmark's own account."""
    return KeyStore(keys_file).add("bench")
