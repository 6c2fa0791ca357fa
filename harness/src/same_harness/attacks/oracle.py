"""The attacker's view of the service: send a batch of images, get probabilities and labels.

Two implementations answer the same way:

- :class:`GrpcOracle` queries the live ``same`` ensemble on a Triton server over gRPC, in
  batches, as a real thief would;
- :class:`InProcessOracle` runs an in-process pipeline (by default
  :class:`~same_defense.runtime.inprocess.InProcessSame`: the repository's ONNX graphs and the
  defense code the Triton step runs) for fast sweeps.

Both count queries against a budget and keep the transcript (queries and answers). The
in-process one also keeps what only the operator sees (the SAME score and the flag of every
query), which the evaluation reads; an attack never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class BudgetExceeded(RuntimeError):
    """The attack asked for more queries than its budget allows."""


@dataclass(frozen=True)
class Answer:
    """What the service returns for a batch: what the attacker sees."""

    probs: np.ndarray  # float32 [N, C]
    labels: np.ndarray  # int64 [N]; -1 where the service refused (reject policy)


class Oracle(Protocol):
    """Anything an attack can query. ``budget=None`` means unlimited."""

    budget: int | None
    queries_used: int

    @property
    def remaining(self) -> int | None:
        """Queries the budget still allows; None when unlimited."""

    def query(self, images: np.ndarray) -> Answer:
        """Answer a batch ``[N, C, H, W]`` and count it against the budget.

        Raises:
            BudgetExceeded: The batch would take the queries used past the budget.
        """


class _Accounting:
    """Budget, counting and the transcript; subclasses implement :meth:`_answer`."""

    def __init__(self, budget: int | None, record: bool = True) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.budget = budget
        self.queries_used = 0
        self.record = record
        self._queries: list[np.ndarray] = []
        self._answers: list[Answer] = []

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries_used

    def query(self, images: np.ndarray) -> Answer:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"queries must be NCHW, got shape {images.shape}")
        if self.budget is not None and self.queries_used + len(images) > self.budget:
            raise BudgetExceeded(
                f"{len(images)} more queries would exceed the budget of {self.budget} "
                f"({self.queries_used} used)"
            )
        if len(images) == 0:
            return Answer(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        answer = self._answer(images)
        self.queries_used += len(images)
        if self.record:
            self._queries.append(images)
            self._answers.append(answer)
        return answer

    def _answer(self, images: np.ndarray) -> Answer:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def queries(self) -> np.ndarray:
        """Every image sent so far, in order (empty ``[0]`` array if none or not recording)."""
        return np.concatenate(self._queries) if self._queries else np.zeros((0,), np.float32)

    @property
    def answers(self) -> Answer:
        if not self._answers:
            return Answer(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        return Answer(
            np.concatenate([a.probs for a in self._answers]),
            np.concatenate([a.labels for a in self._answers]),
        )


class InProcessOracle(_Accounting):
    """Answers from a pipeline with ``infer(images) -> Decision`` (same graphs, same core).

    ``pipeline`` is :class:`~same_defense.runtime.inprocess.InProcessSame` for the served
    defense, or any object with the same ``infer`` (the evaluation's other defenses).
    ``scores`` and ``flagged`` hold the operator's view of every query sent.
    """

    def __init__(self, pipeline, budget: int | None = None, record: bool = True) -> None:
        super().__init__(budget, record)
        self.pipeline = pipeline
        self._scores: list[np.ndarray] = []
        self._flagged: list[np.ndarray] = []

    def _answer(self, images: np.ndarray) -> Answer:
        decision = self.pipeline.infer(images)
        if self.record:
            self._scores.append(np.asarray(decision.scores, dtype=np.float64))
            self._flagged.append(np.asarray(decision.flagged, dtype=bool))
        return Answer(
            np.asarray(decision.probs, dtype=np.float32),
            np.asarray(decision.labels, dtype=np.int64).reshape(-1),
        )

    @property
    def scores(self) -> np.ndarray:
        """The SAME score of every query answered while recording, in order."""
        return np.concatenate(self._scores) if self._scores else np.zeros(0)

    @property
    def flagged(self) -> np.ndarray:
        """Whether the service flagged each query answered while recording, in order."""
        return np.concatenate(self._flagged) if self._flagged else np.zeros(0, bool)


class GrpcOracle(_Accounting):
    """The live ``same`` ensemble over gRPC, queried in batches of ``batch_size``."""

    def __init__(
        self,
        url: str,
        budget: int | None = None,
        batch_size: int = 64,
        model: str = "same",
        record: bool = True,
        api_key: str | None = None,
    ) -> None:
        from same_defense.client import (
            SameClient,  # tritonclient only where the live endpoint is used
        )

        super().__init__(budget, record)
        self.batch_size = batch_size
        self.client = SameClient(url, model=model, api_key=api_key)

    def _answer(self, images: np.ndarray) -> Answer:
        prediction = self.client.classify(images, batch_size=self.batch_size)
        return Answer(prediction.probs.astype(np.float32), prediction.labels.astype(np.int64))

    def close(self) -> None:
        """Close the gRPC connection."""
        self.client.close()

    def __enter__(self) -> GrpcOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LabelOnly:
    """What a thief sees when the service returns only ``LABEL``.

    The probabilities it gets are the one-hot of the label (all zeros where refused). Budget
    and counts are the wrapped oracle's.
    """

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle

    @property
    def budget(self) -> int | None:
        """The wrapped oracle's budget."""
        return self.oracle.budget

    @property
    def queries_used(self) -> int:
        """Queries the wrapped oracle has answered."""
        return self.oracle.queries_used

    @property
    def remaining(self) -> int | None:
        """Queries the wrapped oracle's budget still allows; None when unlimited."""
        return self.oracle.remaining

    def query(self, images: np.ndarray) -> Answer:
        """Query the wrapped oracle; keep its labels and replace its probabilities by one-hots."""
        answer = self.oracle.query(images)
        probs = np.zeros_like(answer.probs, dtype=np.float32)
        ok = answer.labels >= 0
        probs[np.flatnonzero(ok), answer.labels[ok]] = 1.0
        return Answer(probs, answer.labels)
