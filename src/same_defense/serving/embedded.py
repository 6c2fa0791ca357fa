"""Run the real ``tritonserver`` binary from the nvidia-pytriton wheel, without a container.

The wheel holds Triton 2.51 with the Python backend. We lay out a backend directory once
(``.triton/backends``): the Python backend library, the stub built for the running Python, and
our Python-based ``onnxruntime`` backend. Then the binary runs on the model repository with
the wheel's shared libraries and the current virtual environment first on ``PATH`` (so the
stubs import this environment's numpy and onnxruntime).

The server runs in its own process group; :meth:`EmbeddedTriton.stop` ends the whole group, so
no Python stub outlives it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ports import free_port
from .supervisor import StubSupervisor

# Everything but health and metadata: inference, model control, shared memory, statistics...
RESTRICTED_CATEGORIES = (
    "inference,shared-memory,model-config,model-repository,statistics,trace,logging"
)
_BACKEND_SOURCE = Path(__file__).parent / "onnxruntime_backend" / "model.py"


class ServerError(RuntimeError):
    """The server could not start or did not become ready."""


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - install problem
        raise ServerError("nvidia-pytriton is not installed: run `make install`") from exc
    return Path(pytriton.__file__).parent


def prepare_backends(workdir: Path) -> Path:
    """Create ``workdir/backends`` (idempotent) and return it."""
    root = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    backends = workdir / "backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in list((root / "backends" / "python").glob("*.*")) + [stub]:
        dest = python_dir / src.name
        if not dest.exists() or dest.stat().st_mtime < src.stat().st_mtime:
            shutil.copy2(src, dest)
    ort_dir = backends / "onnxruntime"
    ort_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(_BACKEND_SOURCE, ort_dir / "model.py")
    return backends


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    libs = _pytriton_root().parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # One thread per onnxruntime/numpy call inside the stubs unless the caller says otherwise.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class EmbeddedTriton:
    repository: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_file: Path = Path("logs/tritonserver.log")
    workdir: Path = Path(".triton")
    host: str = "127.0.0.1"
    extra_args: list[str] = field(default_factory=list)
    # (header, value) that Triton demands on every gRPC and HTTP call but health/metadata;
    # see same_defense.gateway. None: no restriction (local development, tests).
    restricted_key: tuple[str, str] | None = None
    # False: Triton opens no HTTP port at all (--allow-http=false); the protected deployment
    # reaches Triton over gRPC only, so an HTTP port there would be one more door to lock.
    allow_http: bool = True
    # Reload a model whose Python stub died (see supervisor.py); needs explicit model control.
    supervise: bool = True
    supervisor: StubSupervisor | None = None
    process: subprocess.Popen | None = None
    _log_offset: int = 0

    @classmethod
    def on_free_ports(cls, repository: Path, log_file: Path, **options: Any) -> EmbeddedTriton:
        """Triton for ``repository`` on loopback ports nothing uses now, not started."""
        ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
        return cls(repository, log_file=log_file, **ports, **options)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        if not self.allow_http:
            raise ServerError("this server has no HTTP port (allow_http=False)")
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        binary = _pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        return [
            str(binary),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={prepare_backends(Path(self.workdir)).resolve()}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--grpc-address={self.host}",
            # Triton binds metrics to the HTTP address unless told: with HTTP closed that
            # would be 0.0.0.0, so say it.
            f"--metrics-address={self.host}",
            *self._http_args(),
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *(["--model-control-mode=explicit", "--load-model=*"] if self.supervise else []),
            *self._restriction_args(),
            *self.extra_args,
        ]

    def _http_args(self) -> list[str]:
        if not self.allow_http:
            return ["--allow-http=false"]
        return [f"--http-port={self.http_port}", f"--http-address={self.host}"]

    def _restriction_args(self) -> list[str]:
        if self.restricted_key is None:
            return []
        key, value = self.restricted_key
        # The gRPC lock alone left Triton's HTTP answering every model to anyone on the host:
        # the same key locks the same categories on both protocols.
        args = [f"--grpc-restricted-protocol={RESTRICTED_CATEGORIES}:{key}={value}"]
        if self.allow_http:
            args.append(f"--http-restricted-api={RESTRICTED_CATEGORIES}:{key}={value}")
        return args

    @property
    def http_headers(self) -> dict[str, str] | None:
        """What an HTTP client must send when the API is restricted (the key as is)."""
        if self.restricted_key is None:
            return None
        key, value = self.restricted_key
        return {key: value}

    @property
    def grpc_headers(self) -> dict[str, str] | None:
        """What a gRPC client must send when the protocol is restricted (Triton's prefix)."""
        if self.restricted_key is None:
            return None
        key, value = self.restricted_key
        return {f"triton-grpc-protocol-{key}": value}

    def start(self, timeout: float = 180.0) -> EmbeddedTriton:
        if not (Path(self.repository) / "same" / "config.pbtxt").exists():
            raise ServerError(f"{self.repository} holds no `same` ensemble: run `make repository`")
        Path(self.log_file).parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        self._log_offset = log.tell()  # report only this run's lines
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(),
            start_new_session=True,
        )
        log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self.supervisor = StubSupervisor(
                self.process.pid, Path(self.repository), self.grpc_url, self.grpc_headers
            )
            self.supervisor.start()
        return self

    def wait_ready(self, timeout: float) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerError(
                        f"tritonserver exited with code {self.process.returncode} while "
                        f"starting:\n{self.log_errors() or self.log_tail()}"
                    )
                try:
                    if client.is_server_ready() and client.is_model_ready("same"):
                        return
                    failed = _failed_models(client, self.grpc_headers)
                except Exception:  # not listening yet
                    failed = []
                if failed:
                    raise ServerError("models failed to load: " + "; ".join(failed))
                time.sleep(0.5)
        finally:
            client.close()
        raise ServerError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_errors(self) -> str:
        """The error lines of the log (Triton prefixes them with E), minus CUDA-less noise."""
        lines = self._read_log().splitlines()
        noise = ("CudaDriverHelper", "unable to create stream", "CUDA driver")
        return "\n".join(
            line
            for line in lines
            if (line[:1] == "E" and line[1:5].isdigit() or line.startswith("error:"))
            and not any(n in line for n in noise)
        )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._read_log().splitlines()[-lines:]) or "(no log)"

    def _read_log(self) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left (stubs included)."""
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor.join(5)
            self.supervisor = None
        if self.process is None:
            return
        pgid = self.process.pid
        if self.process.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.process.wait()
        _signal_group(pgid, signal.SIGKILL)  # stubs the server failed to reap
        self.process = None

    def __enter__(self) -> EmbeddedTriton:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _failed_models(client, headers: dict[str, str] | None) -> list[str]:
    """``name: reason`` for every model Triton gave up on (UNAVAILABLE with a reason)."""
    index = client.get_model_repository_index(headers=headers, as_json=True).get("models", [])
    return [
        f"{m['name']}: {m['reason']}"
        for m in index
        if m.get("state") == "UNAVAILABLE" and m.get("reason")
    ]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
