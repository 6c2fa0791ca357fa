"""Accounts: who is calling (API keys) and what the service remembers about each caller.

- :mod:`.keys`: operator-provisioned API keys, stored hashed; the gateway authenticates with it.
- :mod:`.store`: account state in memory (one gateway) or in Redis (several gateways).
- :mod:`.service`: the account-level defense on top of a store, shared by the gateway and the
  offline evaluation: is this account suspected, and feed it a request's p-values.
- :mod:`.links`, :mod:`.population`: what ties accounts together (networks, key groups) and
  when many unrelated ones shift at once (a drift, not thieves).
- :mod:`.admin`: the operator's view from a running gateway (loopback HTTP API and its client);
  :mod:`.audit`: the trail of what changed an account, and when.
- :mod:`.cli`: ``same-accounts``, the operator's command line over both.

The statistics themselves (p-values, CUSUM) live in ``same_defense.core.accounts``.
"""

from .keys import KeyStore, KeyStoreError
from .service import AccountService, AccountStateUnavailable, Answered, sample_hashes
from .store import AccountStore, MemoryStore, RedisStore, StoreUnavailable

__all__ = [
    "AccountService",
    "AccountStateUnavailable",
    "AccountStore",
    "Answered",
    "KeyStore",
    "KeyStoreError",
    "MemoryStore",
    "RedisStore",
    "StoreUnavailable",
    "sample_hashes",
]
