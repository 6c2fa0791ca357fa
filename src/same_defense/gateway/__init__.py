"""The public entry point: a gRPC gateway that exposes only the ``same`` ensemble.

Triton lets any client that reaches its endpoint call every loaded model (server issue 5558);
its restricted-protocol option gates whole API categories, not single models. The gateway
forwards only health, server metadata and the model calls that name ``same``; everything else
(the raw ``victim``, the ``reconstructor``, repository control, shared memory, statistics) is
refused with PERMISSION_DENIED before it reaches Triton.
"""

from .proxy import GatewayServer

__all__ = ["GatewayServer"]
