"""The public entry point: a gateway (gRPC and KServe v2 HTTP) that exposes only ``same``.

Triton lets any client that reaches its endpoint call every loaded model (server issue 5558);
its restricted-protocol option gates whole API categories, not single models. The gateway
forwards only health, server metadata and the model calls that name ``same``; everything else
(the raw ``victim``, the ``reconstructor``, repository control, shared memory, statistics) is
refused (gRPC PERMISSION_DENIED, HTTP 403) before it reaches Triton. Both front ends go
through one implementation of the rules, :class:`~.rules.GatewayCore`.
"""

from .proxy import GatewayServer

__all__ = ["GatewayServer"]
