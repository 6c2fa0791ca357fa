"""Tensor names in an ONNX graph: listing, renaming and inventing names that collide with none.

The wrapper around a provided graph adds its own tensors and takes over ``IMAGE`` / ``LOGITS``;
names are looked up in subgraphs too, because If/Loop bodies may read outer tensors by name.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableSequence

import onnx
from onnx import AttributeProto


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name in ``graph`` and its subgraphs (If/Loop bodies see outer names)."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for sub in _subgraphs(node):
            names |= tensor_names(sub)
    names.discard("")  # the name of an omitted optional input
    return names


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename ``old`` everywhere in ``graph``, subgraphs included (``new`` must be unused)."""
    for named in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if named.name == old:
            named.name = new
    for node in graph.node:
        _replace(node.input, old, new)
        _replace(node.output, old, new)
        for sub in _subgraphs(node):
            rename_tensor(sub, old, new)


def _replace(names: MutableSequence[str], old: str, new: str) -> None:
    for i, name in enumerate(names):
        if name == old:
            names[i] = new


class FreshNames:
    """Fresh tensor names that collide with nothing in the provided graph."""

    def __init__(self, used: set[str]) -> None:
        self.used = set(used)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name
