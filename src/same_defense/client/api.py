"""Python API over gRPC: classify images through ``same`` and report server health.

Errors from the transport or the server become :class:`SameClientError` with a message that
says what to do, never a raw gRPC traceback.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

DEFAULT_URL = "127.0.0.1:8001"
# The public endpoint (the gateway) wants an API key; SameClient reads it from here by default.
API_KEY_ENV = "SAME_API_KEY"


class SameClientError(RuntimeError):
    """The server is unreachable, the model is missing, or the server refused the input."""


@dataclass(frozen=True)
class Prediction:
    """The service's answer to :meth:`SameClient.classify`, one row per image, in order."""

    probs: np.ndarray  # float32 [N, classes]
    labels: np.ndarray  # int64 [N]; -1 where the service refused to answer (reject policy)


def _explain(exc: InferenceServerException, url: str, model: str) -> str:
    text = exc.message() if hasattr(exc, "message") else str(exc)
    status = str(exc.status() or "")
    if (
        "UNAVAILABLE" in status
        or "failed to connect" in text.lower()
        or "connection refused" in text.lower()
    ):
        return (
            f"cannot reach Triton at {url}: is the server running (`make serve`)? "
            "Give its address with --url host:port (url= in Python)"
        )
    if "UNAUTHENTICATED" in status:
        return f"{url} refused the API key: {text} (set {API_KEY_ENV}, or --api-key / api_key=)"
    if "DEADLINE_EXCEEDED" in status:
        return f"request to {url} timed out"
    if "unknown model" in text.lower() or "is not found" in text.lower():
        return f"model {model!r} is not available on {url}: {text}"
    return f"server refused the request: {text}"


def is_transient(exc: InferenceServerException) -> bool:
    """Failures that a later identical request can succeed past."""
    status = str(exc.status() or "")
    text = str(exc.message() if hasattr(exc, "message") else exc).lower()
    return "UNAVAILABLE" in status or "is not healthy" in text


class SameClient:
    """One connection to a Triton server. Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = "same",
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        api_key: str | None = None,
    ) -> None:
        """Talk to ``model`` on the Triton server or gateway at ``url`` (gRPC ``host:port``).

        ``api_key`` (default: the ``SAME_API_KEY`` environment variable) is sent as
        ``authorization: Bearer <key>`` on every call; Triton itself ignores it.
        ``timeout_s`` bounds each inference request.

        Transient failures (server unreachable or restarting, a crashed backend process
        being restarted) are retried ``retries`` times after ``backoff_s``, doubling each time.
        Every call this client makes is a read or an inference, so repeating one is safe.
        """
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.retried = 0  # retries made so far, for callers that report them
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._headers = {"authorization": f"Bearer {key}"} if key else None
        self._client = grpcclient.InferenceServerClient(url)
        self._max_batch: int | None = None
        self._input_shape: tuple[int, ...] | None = None
        self._class_names: tuple[str, ...] = ()

    def __enter__(self) -> SameClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the gRPC connection."""
        self._client.close()

    def _call(self, fn, *args, **kwargs):
        if self._headers:
            kwargs["headers"] = self._headers
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except InferenceServerException as exc:
                if attempt == self.retries or not is_transient(exc):
                    raise SameClientError(_explain(exc, self.url, self.model)) from None
            self.retried += 1
            time.sleep(delay)
            delay *= 2

    def _load_metadata(self) -> None:
        config = self._call(self._client.get_model_config, self.model, as_json=True)["config"]
        self._max_batch = int(config.get("max_batch_size", 0)) or None
        dims = config["input"][0]["dims"]
        self._input_shape = tuple(int(d) for d in dims)
        names = config.get("parameters", {}).get("class_names", {}).get("string_value")
        try:
            self._class_names = tuple(str(n) for n in json.loads(names)) if names else ()
        except ValueError:  # a hand-written config: labels stay numbers
            self._class_names = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The per-sample shape the model takes, e.g. ``(1, 28, 28)``."""
        if self._input_shape is None:
            self._load_metadata()
        return self._input_shape  # type: ignore[return-value]

    @property
    def class_names(self) -> tuple[str, ...]:
        """What each label means, from the model's config (empty when it does not say)."""
        if self._input_shape is None:
            self._load_metadata()
        return self._class_names

    def class_name(self, label: int) -> str | None:
        """The name of ``label``; None for a refusal (-1) or when the config names none."""
        names = self.class_names
        return names[label] if 0 <= label < len(names) else None

    @property
    def max_batch_size(self) -> int | None:
        """The most samples the model takes per request; None when its config sets no limit."""
        if self._input_shape is None:
            self._load_metadata()
        return self._max_batch

    def classify(self, images: np.ndarray, batch_size: int | None = None) -> Prediction:
        """Send ``images`` (float, ``[N, C, H, W]``, pixels in [0, 1]) through ``same``.

        Larger arrays are split into requests of at most the server's max batch size; the
        answers come back in order.
        """
        images = np.asarray(images)
        if images.size == 0:
            raise SameClientError("no images to classify")
        if images.dtype.kind != "f":
            raise SameClientError(f"images must be floating point in [0, 1], got {images.dtype}")
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim == len(self.input_shape):
            images = images[None]
        if tuple(images.shape[1:]) != self.input_shape:
            raise SameClientError(
                f"images have shape {images.shape[1:]} per sample, "
                f"{self.model} takes {self.input_shape} (C, H, W)"
            )
        step = min(
            batch_size or self.max_batch_size or len(images), self.max_batch_size or len(images)
        )
        probs, labels = [], []
        for start in range(0, len(images), max(1, step)):
            p, lab = self._infer(images[start : start + step])
            probs.append(p)
            labels.append(lab)
        return Prediction(np.concatenate(probs), np.concatenate(labels))

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor = grpcclient.InferInput("IMAGE", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        outputs = [
            grpcclient.InferRequestedOutput("PROBS"),
            grpcclient.InferRequestedOutput("LABEL"),
        ]
        result = self._call(
            self._client.infer, self.model, [tensor], outputs=outputs, client_timeout=self.timeout_s
        )
        return result.as_numpy("PROBS"), result.as_numpy("LABEL").reshape(-1)

    def health(self) -> dict:
        """Server liveness/readiness and the readiness of every model in the repository."""
        report: dict = {"url": self.url}
        report["live"] = self._call(self._client.is_server_live)
        report["ready"] = self._call(self._client.is_server_ready)
        try:
            index = self._client.get_model_repository_index(
                as_json=True, headers=self._headers
            ).get("models", [])
            report["models"] = {
                m["name"]: {"state": m.get("state", "UNKNOWN"), "reason": m.get("reason", "")}
                for m in index
            }
        except InferenceServerException:
            # Behind the gateway the repository index is not public: ask about our model only.
            ready = self._call(self._client.is_model_ready, self.model)
            report["models"] = {
                self.model: {"state": "READY" if ready else "UNAVAILABLE", "reason": ""}
            }
        report["server_version"] = self._call(self._client.get_server_metadata, as_json=True).get(
            "version"
        )
        return report

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll every 0.5 s until the model is ready, e.g. right after starting the server.

        Raises:
            SameClientError: The model is still not ready after ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._client.is_model_ready(self.model, headers=self._headers):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise SameClientError(
                    f"{self.model} on {self.url} not ready after {timeout_s:.0f}s"
                )
            time.sleep(0.5)
