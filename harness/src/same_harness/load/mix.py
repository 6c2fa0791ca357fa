"""The Locust user mix, declared once for ``make loadtest``, ``make soak`` and ``make cluster``.

The locustfile (``loadtest/locustfile.py``) runs three kinds of user: benign clients sending
one test digit per request, and two attackers (synthetic queries and proxy-data queries) that
send ``attack_batch`` images per request in bursts of ``attack_burst``. The weights set how
many of each Locust spawns.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

_ATTACK_FIELDS = ("attack_batch", "attack_burst")
_HELP = {
    "benign_weight": "Locust weight of benign users (one test digit per request)",
    "synthetic_weight": "weight of attackers sending synthetic queries",
    "proxy_weight": "weight of attackers sending proxy-data queries",
    "attack_batch": "images per attacker request",
    "attack_burst": "attacker requests per burst",
}


@dataclass(frozen=True)
class LocustMix:
    """How many users of each kind Locust spawns and what the attackers send."""

    benign_weight: int = 8
    synthetic_weight: int = 1
    proxy_weight: int = 1
    attack_batch: int = 16
    attack_burst: int = 10

    @classmethod
    def add_arguments(
        cls, p: argparse.ArgumentParser, users: int, spawn_rate: float
    ) -> argparse.ArgumentParser:
        """``--users``, ``--spawn-rate`` (defaults per command) and the mix's own options."""
        p.add_argument("--users", type=int, default=users, help="simulated users")
        p.add_argument(
            "--spawn-rate", type=float, default=spawn_rate, help="users started per second"
        )
        cls._add(p, [f for f in fields(cls) if f.name not in _ATTACK_FIELDS])
        return cls.add_attack_arguments(p)

    @classmethod
    def add_attack_arguments(cls, p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """``--attack-batch`` and ``--attack-burst`` alone (``add_arguments`` adds them too),
        for a command that sets the weights itself."""
        return cls._add(p, [f for f in fields(cls) if f.name in _ATTACK_FIELDS])

    @staticmethod
    def _add(p: argparse.ArgumentParser, chosen: list) -> argparse.ArgumentParser:
        for f in chosen:
            flag = "--" + f.name.replace("_", "-")
            p.add_argument(flag, type=int, default=f.default, help=_HELP[f.name])
        return p

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LocustMix:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @property
    def weights(self) -> str:
        """benign:synthetic:proxy, as the reports print it."""
        return f"{self.benign_weight}:{self.synthetic_weight}:{self.proxy_weight}"

    def locustfile_args(self) -> list[str]:
        """The mix as the locustfile's command-line options."""
        out = []
        for f in fields(self):
            out += ["--" + f.name.replace("_", "-"), str(getattr(self, f.name))]
        return out
