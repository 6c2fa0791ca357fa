"""Locust load test of the served defense, over gRPC with tritonclient.

Three kinds of simulated users, each reported under its own request name:

- ``benign`` (:class:`BenignUser`): one held-out test image per request (batch 1), with think
  time between requests, as an honest client of the service would send;
- ``attacker-synthetic`` (:class:`SyntheticAttacker`): bursts of batched uniform-noise queries
  with no think time, as a data-free thief maximising queries would send;
- ``attacker-proxy`` (:class:`ProxyAttacker`): the same, with a proxy data set (other
  handwriting: sklearn's 8x8 digits upscaled, and natural-image crops).

The target model is an option, so the same user mix runs against the ``same`` ensemble and
against the bare ``victim``. Run it through ``make loadtest`` (which starts the server), or
against a running server::

    locust -f loadtest/locustfile.py --headless -u 20 -r 10 -t 60s \\
        --host 127.0.0.1:8001 --target-model same --csv reports/loadtest/same

Options (each also read from an environment variable, for workers and the web UI):
``--target-model`` (SAME_LOADTEST_MODEL), ``--benign-weight`` / ``--synthetic-weight`` /
``--proxy-weight`` (SAME_LOADTEST_*_WEIGHT), ``--attack-batch``, ``--attack-burst``,
``--think-min`` / ``--think-max``, ``--repository``, ``--data-file`` (SAME_LOADTEST_DATA).
See loadtest/README.md for scaling past one core (``--processes``) and one machine
(master/worker).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

# gRPC must run on gevent's event loop before any channel exists, or every blocking call
# would stall the whole Locust process instead of one simulated user.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.runners import MasterRunner  # noqa: E402

BENIGN = "benign"
SYNTHETIC = "attacker-synthetic"
PROXY = "attacker-proxy"
REQUEST_NAMES = (BENIGN, SYNTHETIC, PROXY)
MODELS = ("same", "victim")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SAME_LOADTEST_{name}", default)


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("SAME load test")
    group.add_argument(
        "--target-model",
        choices=MODELS,
        default=_env("MODEL", "same"),
        help="the served model to load: the defended ensemble or the bare victim",
    )
    group.add_argument(
        "--repository",
        default=_env("REPOSITORY", "model_repository"),
        help="model repository whose manifest names the data set and split seed",
    )
    group.add_argument(
        "--data-file",
        default=_env("DATA", ""),
        help=".npz with benign/synthetic/proxy arrays (written by make loadtest); "
        "without it each process builds them from the data set (seconds)",
    )
    group.add_argument("--benign-weight", type=int, default=int(_env("BENIGN_WEIGHT", "8")))
    group.add_argument("--synthetic-weight", type=int, default=int(_env("SYNTHETIC_WEIGHT", "1")))
    group.add_argument("--proxy-weight", type=int, default=int(_env("PROXY_WEIGHT", "1")))
    group.add_argument(
        "--attack-batch",
        type=int,
        default=int(_env("ATTACK_BATCH", "16")),
        help="images per attacker request",
    )
    group.add_argument(
        "--attack-burst",
        type=int,
        default=int(_env("ATTACK_BURST", "10")),
        help="attacker requests sent back to back per task",
    )
    group.add_argument("--think-min", type=float, default=float(_env("THINK_MIN", "0.5")))
    group.add_argument("--think-max", type=float, default=float(_env("THINK_MAX", "1.5")))
    group.add_argument(
        "--keys-file",
        default=_env("KEYS", ""),
        help="JSON {benign|synthetic|proxy: [API keys]} for the gateway: each user takes the "
        "next key of its class (its account); without it no key is sent (Triton directly)",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=float(_env("REQUEST_TIMEOUT", "60")),
        help="seconds before a request counts as failed",
    )


class Data:
    """Images shared by every simulated user of this process (loaded once, in ``init``)."""

    arrays: dict[str, np.ndarray] = {}
    keys: dict[str, list[str]] = {}
    handed_out: dict[str, int] = {}


def _next_key(kind: str) -> str | None:
    """The next API key of a user class, round robin: users of a class share accounts once
    there are more users than keys."""
    keys = Data.keys.get(kind) or []
    if not keys:
        return None
    i = Data.handed_out.get(kind, 0)
    Data.handed_out[kind] = i + 1
    return keys[i % len(keys)]


def _load_data(data_file: str, repository: str) -> dict[str, np.ndarray]:
    """From ``data_file`` (an .npz that ``make loadtest`` writes: milliseconds) or else built
    from the data set the repository's manifest names (seconds)."""
    if data_file:
        with np.load(data_file) as npz:
            return {k: np.ascontiguousarray(npz[k]) for k in ("benign", "synthetic", "proxy")}
    from same_harness.load.common import load_test_data

    manifest_path = Path(repository) / "defense" / "1" / "same_calibration.json"
    return load_test_data(json.loads(manifest_path.read_text()) if manifest_path.exists() else None)


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library without a command line: keep class defaults
        return
    # Weights come from options so a run can change the mix without editing this file; a
    # class with weight 0 is left out of the run.
    weights = {
        BenignUser: options.benign_weight,
        SyntheticAttacker: options.synthetic_weight,
        ProxyAttacker: options.proxy_weight,
    }
    for cls, weight in weights.items():
        cls.weight = max(0, weight)
    environment.user_classes[:] = [c for c in environment.user_classes if c.weight > 0]
    if not isinstance(environment.runner, MasterRunner):  # a master sends no requests
        # Without --data-file this takes seconds and blocks the event loop: fine for a local
        # run, but a worker that blocks misses heartbeats and its master drops it, so
        # --processes and master/worker runs should pass --data-file (see loadtest/README.md).
        Data.arrays = _load_data(options.data_file, options.repository)
        if options.keys_file:
            Data.keys = json.loads(Path(options.keys_file).read_text())


class TritonUser(User):
    """One gRPC client per simulated user; every call is reported to Locust."""

    abstract = True
    request_name = ""
    kind = ""  # key class in --keys-file

    def on_start(self) -> None:
        if not Data.arrays:  # no init event (used as a library)
            Data.arrays = _load_data(_env("DATA", ""), _env("REPOSITORY", "model_repository"))
        options = self.environment.parsed_options
        host = (self.host or "127.0.0.1:8001").removeprefix("grpc://")
        self.model = options.target_model if options else "same"
        self.timeout_s = options.request_timeout if options else 60.0
        self.client = grpcclient.InferenceServerClient(host)
        key = _next_key(self.kind)
        self.headers = {"authorization": f"Bearer {key}"} if key else None
        self.rng = random.Random()

    def on_stop(self) -> None:
        client = getattr(self, "client", None)  # absent when stopped during on_start
        if client is not None:
            client.close()

    def infer(self, batch: np.ndarray) -> None:
        """Send one request and report it; a wrong answer counts as a failure."""
        start = time.perf_counter()
        size, error = 0, None
        try:
            tensor = grpcclient.InferInput("IMAGE", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            result = self.client.infer(
                self.model, [tensor], client_timeout=self.timeout_s, headers=self.headers
            ).get_response()
            size = sum(len(raw) for raw in result.raw_output_contents)
            rows = result.outputs[0].shape[0] if result.outputs else -1
            if rows != len(batch):
                raise RuntimeError(f"{rows} answers for {len(batch)} images")
        except Exception as exc:  # reported to Locust as this request's failure
            error = exc
        self.environment.events.request.fire(
            request_type=f"grpc:{self.model}",
            name=self.request_name,
            response_time=(time.perf_counter() - start) * 1e3,
            response_length=size,
            exception=error,
            context={"batch": len(batch)},
        )

    def sample(self, pool: np.ndarray, n: int) -> np.ndarray:
        start = self.rng.randrange(0, len(pool) - n + 1)
        return pool[start : start + n]


class BenignUser(TritonUser):
    """An honest client: one test image at a time, then a pause."""

    weight = 8
    request_name = BENIGN
    kind = "benign"

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        low, high = (options.think_min, options.think_max) if options else (0.5, 1.5)
        return self.rng.uniform(low, high)

    @task
    def classify(self) -> None:
        self.infer(self.sample(Data.arrays["benign"], 1))


class _Attacker(TritonUser):
    """A thief labelling a transfer set: bursts of batched queries, no think time."""

    abstract = True
    wait_time = constant(0)

    def pool(self) -> np.ndarray:
        raise NotImplementedError

    @task
    def burst(self) -> None:
        options = self.environment.parsed_options
        batch = options.attack_batch if options else 16
        for _ in range(options.attack_burst if options else 10):
            self.infer(self.sample(self.pool(), batch))


class SyntheticAttacker(_Attacker):
    weight = 1
    request_name = SYNTHETIC
    kind = "synthetic"

    def pool(self) -> np.ndarray:
        return Data.arrays["synthetic"]


class ProxyAttacker(_Attacker):
    weight = 1
    request_name = PROXY
    kind = "proxy"

    def pool(self) -> np.ndarray:
        return Data.arrays["proxy"]
