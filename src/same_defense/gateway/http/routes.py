"""URL routing for the HTTP front end: which gRPC method a KServe v2 path stands for, and
which paths are refused.

A path maps to the gRPC call the rules already know (``ServerMetadata``, ``ModelInfer``, ...),
so one policy decides for both protocols. Triton's HTTP API families this endpoint does not
expose (repository control, shared memory, statistics, model config, trace, logging) get a
:class:`Route` with ``refused`` set: the front end answers them 403 after the key check, like
their gRPC counterparts; paths that are no part of the protocol get no route at all (404).
"""

from __future__ import annotations

from dataclasses import dataclass

# API families of Triton's HTTP protocol that this endpoint does not expose, by first segment
# after /v2: refused (403) after the key check, like their gRPC counterparts.
_REFUSED_FAMILIES = {
    "repository": "model repository control",
    "systemsharedmemory": "system shared memory",
    "cudasharedmemory": "CUDA shared memory",
    "trace": "trace settings",
    "logging": "log settings",
}
# The same, for the actions under /v2/models/<m>[/versions/<v>].
_REFUSED_MODEL_ACTIONS = {
    "config": "model config",
    "stats": "model statistics",
    "trace": "trace settings",
    "generate": "the generate extension",
    "generate_stream": "the generate extension",
}


@dataclass
class Route:
    """A REST call as a gRPC method, or a refusal (``refused``: what is not exposed)."""

    method: str  # gRPC method name, or the HTTP one's description when refused
    model: str = ""
    version: str = ""
    refused: str | None = None
    allowed: tuple[str, ...] = ("GET",)  # HTTP methods the route takes


def route(segments: list[str]) -> Route | None:
    """The route for a decoded path (``["v2", "models", "same", "infer"]``); None: unknown."""
    if not segments or segments[0] != "v2":
        return None
    rest = segments[1:]
    if not rest:
        return Route("ServerMetadata")
    if rest in (["health", "live"], ["health", "ready"]):
        return Route("ServerLive" if rest[1] == "live" else "ServerReady")
    if rest[0] in _REFUSED_FAMILIES:
        return Route(rest[0], refused=_REFUSED_FAMILIES[rest[0]], allowed=("GET", "POST"))
    if rest[0] != "models" or len(rest) < 2:
        return None
    return _models_route(rest[1:])


def _models_route(rest: list[str]) -> Route | None:
    """The route for the segments after ``/v2/models``: ``stats`` (every model's statistics),
    or a model, an optional ``versions/<v>``, and an action."""
    if rest == ["stats"]:
        return Route("stats", refused="model statistics")
    model, tail, version = rest[0], rest[1:], ""
    if tail[:1] == ["versions"]:
        if len(tail) < 2:
            return None
        version, tail = tail[1], tail[2:]
    return _model_action(model, version, tail)


def _model_action(model: str, version: str, tail: list[str]) -> Route | None:
    """The route for what follows a model (and version) in the path."""
    if not tail:
        return Route("ModelMetadata", model, version)
    if tail == ["ready"]:
        return Route("ModelReady", model, version)
    if tail == ["infer"]:
        return Route("ModelInfer", model, version, allowed=("POST",))
    if tail[0] in _REFUSED_MODEL_ACTIONS:
        return Route(tail[0], model, version, _REFUSED_MODEL_ACTIONS[tail[0]], ("GET", "POST"))
    return None
