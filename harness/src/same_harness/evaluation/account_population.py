"""The thieves who talk to the account layer in the offline evaluation: one key or many, one
image per request or batches, linked by network or key group or not, diluting foreign queries
with perturbed copies of a few real images. The honest accounts are in
:mod:`.honest_population`.

Both go through :class:`~same_defense.accounts.AccountService` over a
:class:`~same_defense.accounts.MemoryStore`, the code the gateway runs, and answer with
:func:`~same_defense.core.defend` at the account's tier, the code the Triton step runs; only
the transport is missing. So what is measured here is the served defense, not a
re-implementation of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from same_defense.accounts import AccountService, Answered, MemoryStore, sample_hashes
from same_defense.accounts.population import PopulationMonitor
from same_defense.core import (
    REVIEW,
    SUSPECTED,
    AccountSettings,
    Decision,
    DefenseSettings,
    check_inputs,
    defend,
    reference_from_manifest,
)
from same_defense.core.lineage import sketches
from same_defense.runtime.inprocess import InProcessSame

from ..attacks.oracle import Answer, _Accounting
from ..data.shifts import photo_copies
from .defenses import CachedGraphs

LINK_MODES = ("unrelated", "one-network", "one-group")
# How a thief spreads its requests over its accounts: in turn, or each to a random account
# (a JBDA thief who has read core/lineage.py keeps a query and its parent apart).
SPREADS = ("round-robin", "shuffled")
VIEW_FIELDS = ("score", "flagged", "tier", "account", "misinformed", "foreign")
TIER_CODES = {"": 0, REVIEW: 1, SUSPECTED: 2}


# The responses compared (issue 18): account-settings overrides, how a flagged query of an
# account without evidence is answered, and whether the population monitor runs.
RESPONSES = {
    "graded": ({}, "top1", True),  # the default: review first, policy on strong evidence
    "review-only": ({"auto_strong": False}, "top1", True),  # policy only when confirmed
    "legacy": ({"graded": False}, "policy", False),  # every alarm and flag: the policy
}


def account_service(manifest: dict, monitor: bool = True, response: str = "graded"):
    """A fresh service (empty in-memory store, its own population monitor) with the test
    settings the build wrote, answering as ``response`` (:data:`RESPONSES`)."""
    found = reference_from_manifest(manifest)
    if found is None:
        raise ValueError("the manifest has no 'accounts' section: rebuild the repository")
    overrides, _, uses_monitor = RESPONSES[response]
    settings: AccountSettings = replace(found[1], **overrides)
    population = PopulationMonitor() if monitor and uses_monitor else None
    return AccountService(settings, MemoryStore(settings.dedupe_window), population=population)


def response_settings(settings: DefenseSettings, response: str) -> DefenseSettings:
    """The defense step's settings for ``response``: its answer to a flagged query."""
    first = RESPONSES[response][1]
    return replace(settings, params=replace(settings.params, first_response=first))


def ever_suspected(service: AccountService, account: str) -> int:
    """Distinct queries of ``account`` when its alarm fired; 0 if it never did (offline the
    suspicion's time to live never runs out, so the alarm index is what matters)."""
    return service.store.get(account).suspected_at_query


@dataclass(frozen=True)
class Dilution:
    """A thief holding ``pool`` real images sends ``ratio`` distinct perturbed copies of them
    per foreign query, to keep its accounts' exceedance rate down."""

    pool: np.ndarray
    ratio: int
    seed: int = 0

    def copies(self, budget: int) -> np.ndarray:
        """Enough distinct copies for ``budget`` foreign queries, pool images in turn."""
        per_image = max(1, -(-budget * self.ratio // max(len(self.pool), 1)))
        made = photo_copies(self.pool, per_image, self.seed)
        order = np.arange(len(made)).reshape(len(self.pool), per_image).T.reshape(-1)
        return made[order]


def link_names(mode: str, index: int) -> tuple[str, ...]:
    """The links of thief account ``index``: its own network (unrelated), one shared /24, or
    one shared key group (every key bought under one customer record)."""
    if mode == "unrelated":
        return (f"net:198.{index >> 8 & 255}.{index & 255}.0/24",)
    if mode == "one-network":
        return ("net:203.0.113.0/24",)
    if mode == "one-group":
        return (f"net:198.{index >> 8 & 255}.{index & 255}.0/24", "group:reseller")
    raise ValueError(f"unknown link mode {mode!r}; choose one of {', '.join(LINK_MODES)}")


class AccountOracle(_Accounting):
    """The thief's queries as requests of ``request_size`` images (None: the attack's own
    batches), spread over ``accounts`` accounts (``spread``: in turn, or each request to a
    random one), answered as the gateway and the defense step would.

    Besides the transcript it keeps the operator's view of every query: SAME score, per-query
    flag, the tier it was answered at, the account, whether the answer was misinformation
    (label other than the victim's own) and whether it was a foreign query (not a diluting
    copy). ``graphs`` may be shared between oracles so that repeated images run once.
    """

    def __init__(
        self,
        pipeline: InProcessSame,
        service: AccountService,
        accounts: int = 1,
        budget: int | None = None,
        graphs: CachedGraphs | None = None,
        prefix: str = "thief",
        record: bool = True,
        request_size: int | None = None,
        links: str = "unrelated",
        dilution: Dilution | None = None,
        settings: DefenseSettings | None = None,
        spread: str = "round-robin",
        seed: int = 0,
    ) -> None:
        super().__init__(budget, record)
        if accounts < 1:
            raise ValueError(f"accounts must be >= 1, got {accounts}")
        if spread not in SPREADS:
            raise ValueError(f"unknown spread {spread!r}; choose one of {', '.join(SPREADS)}")
        self._shuffle = np.random.default_rng([seed, 7]) if spread == "shuffled" else None
        self.settings: DefenseSettings = settings or pipeline.settings
        self.service = service
        self.graphs = graphs if graphs is not None else CachedGraphs(pipeline.graphs)
        self.names = [f"{prefix}-{i}" for i in range(accounts)]
        self.links = [link_names(links, i) for i in range(accounts)]
        self.request_size = request_size
        self.requests = 0
        self.dilution = dilution
        self._copies = dilution.copies(budget or 4000) if dilution else None
        self._copies_used = 0
        # The diluting copies sent and their answers: the thief trains on them too.
        self.extra_images: list[np.ndarray] = []
        self.extra_answers: list[Answer] = []
        self._view: dict[str, list[np.ndarray]] = {k: [] for k in VIEW_FIELDS}
        # account -> thief queries sent (all accounts) by the end of the request that tipped it
        self.first_suspected: dict[str, int] = {}
        self.sent = 0

    def _interleave(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stream actually sent: each foreign image followed by ``ratio`` copies."""
        if self.dilution is None:
            return images, np.ones(len(images), bool)
        r = self.dilution.ratio
        need = len(images) * r
        if self._copies_used + need > len(self._copies):  # budget overrun: wrap around
            self._copies = np.concatenate([self._copies, self._copies])
        copies = self._copies[self._copies_used : self._copies_used + need]
        self._copies_used += need
        stream = np.concatenate(
            [images[:, None], copies.reshape(len(images), r, *images.shape[1:])], axis=1
        ).reshape(-1, *images.shape[1:])
        foreign = np.tile(np.r_[True, np.zeros(r, bool)], len(images))
        return stream, foreign

    def _answer(self, images: np.ndarray) -> Answer:
        stream, foreign = self._interleave(images)
        size = self.request_size or len(images) * (
            1 + (self.dilution.ratio if self.dilution else 0)
        )
        probs, labels = [], []
        for start in range(0, len(stream), size):
            answer = self._request(stream[start : start + size], foreign[start : start + size])
            probs.append(answer.probs)
            labels.append(answer.labels)
        probs_all, labels_all = np.concatenate(probs), np.concatenate(labels)
        if self.dilution is not None:
            self.extra_images.append(stream[~foreign])
            self.extra_answers.append(Answer(probs_all[~foreign], labels_all[~foreign]))
        return Answer(probs_all[foreign], labels_all[foreign])

    def _request(self, images: np.ndarray, foreign: np.ndarray) -> Answer:
        index = (
            self.requests % len(self.names)
            if self._shuffle is None
            else int(self._shuffle.integers(len(self.names)))
        )
        name = self.names[index]
        self.requests += 1
        out = self.graphs.run(images)
        check_inputs(out.input_stats)  # refused by the ensemble before any account bookkeeping
        hashes, kept = sample_hashes(images), sketches(images)

        def answer(tier: str) -> Answered[Decision]:
            decision = defend(out.logits, out.recon_error, out.shadow_logits, self.settings, tier)
            return Answered(decision, decision.evidence(), hashes, kept)

        decision, tier = self.service.serve(name, answer, self.links[index])
        self.sent += len(images)
        if name not in self.first_suspected and ever_suspected(self.service, name):
            self.first_suspected[name] = self.sent
        n = len(images)
        misinformed = decision.labels != decision.true_probs.argmax(axis=1)
        for key, value in zip(
            VIEW_FIELDS,
            (
                decision.scores,
                decision.flagged,
                np.full(n, TIER_CODES[tier]),
                np.full(n, index),
                misinformed,
                foreign,
            ),
            strict=True,
        ):
            self._view[key].append(np.asarray(value))
        return Answer(
            np.asarray(decision.probs, dtype=np.float32),
            np.asarray(decision.labels, dtype=np.int64).reshape(-1),
        )

    def view(self, key: str) -> np.ndarray:
        """Per query sent (copies included): ``score``, ``flagged``, ``tier`` (0 normal, 1
        review, 2 suspected), ``account``, ``misinformed`` or ``foreign``."""
        parts = self._view[key]
        empty = {"score": np.float64, "account": np.int64, "tier": np.int64}.get(key, bool)
        return np.concatenate(parts) if parts else np.zeros(0, empty)

    def transcript(self) -> tuple[np.ndarray, Answer]:
        """Everything the thief got answers for (its foreign queries, then its copies)."""
        images, answer = self.queries, self.answers
        if not self.extra_images:
            return images, answer
        return (
            np.concatenate([images, *self.extra_images]),
            Answer(
                np.concatenate([answer.probs, *[a.probs for a in self.extra_answers]]),
                np.concatenate([answer.labels, *[a.labels for a in self.extra_answers]]),
            ),
        )

    def summary(self) -> dict:
        """The operator's figures for this thief (JSON-ready)."""
        tier, flagged = self.view("tier"), self.view("flagged")
        foreign, misinformed = self.view("foreign"), self.view("misinformed")
        n_sent = max(len(tier), 1)
        suspected = len(self.first_suspected)
        delays = [ever_suspected(self.service, name) for name in self.first_suspected]
        held = sum(self.service.store.get(n).held for n in self.names)
        return {
            "accounts": len(self.names),
            "accounts_used": len(np.unique(self.view("account"))),
            "accounts_suspected": suspected,
            "accounts_held": int(held),
            "accounts_suspected_share": suspected / len(self.names),
            # distinct queries of the first account when it was suspected (None: never)
            "detection_delay": ever_suspected(self.service, self.names[0]) or None,
            "detection_delay_median": float(np.median(delays)) if delays else None,
            "thief_queries_at_first_alarm": min(self.first_suspected.values(), default=None),
            "review_share": float((tier == 1).sum() / n_sent),
            "forced_share": float((tier == 2).sum() / n_sent),
            "flag_rate": float(flagged.sum() / n_sent),
            "misinformed_share": float(misinformed[foreign].mean()) if foreign.any() else 0.0,
            "queries_sent": int(len(tier)),
        }
