"""Restart a Python-backend model whose stub process died, without an operator.

Triton 2.51 does not restart a crashed Python stub: every later request to that model fails
with "Stub process '...' is not healthy" while the model still reports READY, so no health
probe notices. The supervisor watches the server's stub processes and, when one of a model's
stubs is gone, reloads that model through the model-control API (explicit mode). Triton
skips a reload whose config is unchanged, so the reload carries a fresh ``restart_nonce``
parameter, which no model reads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import psutil
import tritonclient.grpc as grpcclient

log = logging.getLogger("same.supervisor")
STUB_BINARY = "triton_python_backend_stub"


def stubs_by_model(server_pid: int, repository: Path) -> dict[str, set[int]]:
    """``{model name: stub pids}`` from the server's child processes' command lines."""
    root = Path(repository).resolve()
    found: dict[str, set[int]] = {}
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            cmdline = child.cmdline()
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if len(cmdline) < 2 or not cmdline[0].endswith(STUB_BINARY):
            continue
        try:
            model = Path(cmdline[1]).resolve().relative_to(root).parts[0]
        except ValueError:
            continue
        found.setdefault(model, set()).add(child.pid)
    return found


class StubSupervisor(threading.Thread):
    def __init__(
        self,
        server_pid: int,
        repository: Path,
        grpc_url: str,
        headers: dict[str, str] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        super().__init__(name="stub-supervisor", daemon=True)
        self.server_pid = server_pid
        self.repository = repository
        self.grpc_url = grpc_url
        self.headers = headers
        self.interval_s = interval_s
        self.restarts: list[tuple[float, str]] = []  # (time, model) of each restart
        self._stop_event = threading.Event()
        self._expected = stubs_by_model(server_pid, repository)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # keep supervising whatever one round did
                log.exception("supervisor round failed")

    def check_once(self) -> list[str]:
        """Reload every model that lost a stub; return their names."""
        current = stubs_by_model(self.server_pid, self.repository)
        lost = [
            model for model, pids in self._expected.items() if not pids <= current.get(model, set())
        ]
        for model in lost:
            log.warning("stub of %s died: reloading the model", model)
            self.reload(model)
            self.restarts.append((time.time(), model))
        if lost:
            self._expected = stubs_by_model(self.server_pid, self.repository)
        return lost

    def reload(self, model: str) -> None:
        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            config = client.get_model_config(model, headers=self.headers, as_json=True)["config"]
            config.setdefault("parameters", {})["restart_nonce"] = {
                "string_value": str(time.time_ns())
            }
            client.load_model(model, headers=self.headers, config=json.dumps(config))
