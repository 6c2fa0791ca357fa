"""Locust in distributed mode on one machine: one ``--master`` and N ``--worker`` processes.

The master only counts (it sends no requests); each worker is one core's worth of gevent
users. Workers get the same locustfile options as the master: the locustfile loads its images
and API keys in its ``init`` event, before the master's options reach a worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from same_defense.ports import free_port

from .common import locustfile
from .mix import LocustMix
from .stats import read_locust_stats


@dataclass(frozen=True)
class LoadSettings:
    """What every run of a comparison shares (the same for the single and the replicated
    deployment)."""

    users: int = 12
    spawn_rate: float = 4.0
    run_time_s: int = 60
    workers: int = 2
    mix: LocustMix = field(default_factory=LocustMix)
    repository: Path = Path("model_repository")


def locustfile_options(s: LoadSettings, data_file: Path, keys_file: Path) -> list[str]:
    return [
        "-f",
        str(locustfile()),
        "--target-model",
        "same",
        "--repository",
        str(s.repository),
        "--data-file",
        str(data_file),
        "--keys-file",
        str(keys_file),
        *s.mix.locustfile_args(),
    ]


def master_command(s: LoadSettings, host: str, port: int, prefix: Path, options: list[str]):
    return [
        sys.executable,
        "-m",
        "locust",
        *options,
        "--master",
        "--headless",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        str(port),
        "--expect-workers",
        str(s.workers),
        "--expect-workers-max-wait",
        "120",
        "-u",
        str(s.users),
        "-r",
        str(s.spawn_rate),
        "-t",
        f"{s.run_time_s}s",
        "--host",
        host,
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--stop-timeout",
        "5",
    ]


def worker_command(port: int, options: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        *options,
        "--worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(port),
    ]


@dataclass
class DistributedRun:
    """One headless run; :meth:`wait` returns the master's exit code (1 if any failure)."""

    settings: LoadSettings
    host: str
    data_file: Path
    keys_file: Path
    prefix: Path  # CSV/HTML/log prefix

    workers_killed: int = 0  # workers still running 15 s after the master ended

    def start(self) -> DistributedRun:
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        options = locustfile_options(self.settings, self.data_file, self.keys_file)
        self._logs = [open(f"{self.prefix}.master.log", "w")]  # noqa: SIM115
        # Own sessions: a timeout kills Locust's process groups, nothing else.
        self.master = subprocess.Popen(
            master_command(self.settings, self.host, port, self.prefix, options),
            stdout=self._logs[0],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers = []
        for i in range(self.settings.workers):
            log = open(f"{self.prefix}.worker{i}.log", "w")  # noqa: SIM115
            self._logs.append(log)
            self.workers.append(
                subprocess.Popen(
                    worker_command(port, options),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return self

    def wait(self, grace_s: float = 180.0) -> int:
        procs = [self.master, *self.workers]
        try:
            code = self.master.wait(self.settings.run_time_s + grace_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"Locust did not finish in time; see {self.prefix}.master.log"
            ) from None
        else:
            # The master tells its workers to quit; one that misses the message (seen when
            # the machine is loaded) has nothing left to report and is killed below.
            for w in self.workers:
                try:
                    w.wait(15)
                except subprocess.TimeoutExpired:
                    self.workers_killed += 1
            return code
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            for log in self._logs:
                log.close()

    def stats(self) -> dict[str, dict]:
        path = Path(f"{self.prefix}_stats.csv")
        return read_locust_stats(path) if path.exists() else {}

    def workers_seen(self) -> int:
        """Workers the master reported as connected (from its log)."""
        text = Path(f"{self.prefix}.master.log").read_text(errors="replace")
        return sum("reported as ready. " in line for line in text.splitlines())
