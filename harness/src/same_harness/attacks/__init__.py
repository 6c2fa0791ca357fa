"""Model-extraction attacks against the ``same`` endpoint, each with a query budget.

An attack talks to an :class:`~.oracle.Oracle` (the live gRPC endpoint or the in-process
pipeline), spends at most the oracle's budget, and trains a clone on probabilities or on
labels only. See ``evaluation/`` for the matrix that runs them against each defense.
"""

from .base import Attack, AttackResult, query_in_batches
from .clone import (
    OUTPUT_TYPES,
    CloneConfig,
    CloneTrainer,
    clone_architecture,
    predict,
    training_targets,
)
from .dfme import Dfme, Generator
from .jbda import Jbda, jacobian_step
from .knockoff import (
    LABELLED_SOURCES,
    TRANSFER_SETS,
    KnockoffNets,
    transfer_set,
    transfer_set_available,
)
from .noise import UniformNoise
from .oracle import Answer, BudgetExceeded, GrpcOracle, InProcessOracle, LabelOnly, Oracle

__all__ = [
    "OUTPUT_TYPES",
    "LABELLED_SOURCES",
    "TRANSFER_SETS",
    "Answer",
    "Attack",
    "AttackResult",
    "BudgetExceeded",
    "CloneConfig",
    "CloneTrainer",
    "Dfme",
    "Generator",
    "GrpcOracle",
    "InProcessOracle",
    "Jbda",
    "KnockoffNets",
    "LabelOnly",
    "Oracle",
    "UniformNoise",
    "clone_architecture",
    "jacobian_step",
    "predict",
    "query_in_batches",
    "training_targets",
    "transfer_set",
    "transfer_set_available",
]
