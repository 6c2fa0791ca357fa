"""The import graph keeps the declared layers: imports point down, and no module is in a circle.

Read from the source (no import is run), so the rule is kept by CI rather than by review.
docs/architecture.md explains the layers; a new package goes into LAYERS where it belongs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"same_defense": ROOT / "src" / "same_defense"}
PACKAGES["same_harness"] = ROOT / "harness" / "src" / "same_harness"

# Lowest first. A package (or top-level module) may import its own modules and those of
# lower layers; packages of one layer are independent of each other. The harness stands on
# the whole product; the product never imports the harness.
LAYERS = {
    "same_defense": (
        ("core", "cli_errors", "ports"),
        ("data", "models"),
        ("train", "runtime"),
        ("export",),
        ("accounts", "client"),
        ("gateway",),
        ("serving",),
        ("deploy",),
    ),
    "same_harness": (
        ("reporting", "data"),
        ("attacks",),
        ("evaluation",),
        ("load",),
        ("bench", "cluster"),
        ("demo", "docs"),
    ),
}
# Run by Triton's Python backend, not imported: they import its utilities and the copy of
# core written beside them (same_core).
TRITON_STEPS = ("serving/triton_step/model.py", "serving/onnxruntime_backend/model.py")


def _modules() -> dict[str, Path]:
    found = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            if rel.as_posix() in TRITON_STEPS:
                continue
            parts = [top, *rel.with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a package's name where a module is not known)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" names a module; "from mod import name" does not.
            targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = targets or [base]
        else:
            continue
        out |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return out - {name}


def _unit(module: str) -> tuple[str, str]:
    top, _, rest = module.partition(".")
    return top, rest.partition(".")[0]


def _layer(unit: tuple[str, str]) -> int:
    top, package = unit
    for i, members in enumerate(LAYERS[top]):
        if package in members:
            return i
    raise AssertionError(f"{top}.{package} is in no layer: add it to LAYERS (tests/test_layers.py)")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_package_has_a_layer():
    for module in _graph():
        if module not in PACKAGES:
            _layer(_unit(module))


def test_imports_point_down():
    wrong = []
    for module, targets in _graph().items():
        if module in PACKAGES:
            continue
        here = _unit(module)
        for target in targets:
            if target in PACKAGES:
                continue  # the distribution's __init__ (its version)
            there = _unit(target)
            if there == here:
                continue
            if here[0] == "same_defense" and there[0] == "same_harness":
                wrong.append(f"{module} -> {target}: the product imports the harness")
            elif here[0] == there[0] and _layer(there) >= _layer(here):
                wrong.append(f"{module} -> {target}: {there[1]} is not below {here[1]}")
    assert not wrong, "\n".join(sorted(wrong))


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node] & graph.keys():
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = [stack.pop()]
            while members[-1] != node:
                members.append(stack.pop())
            if len(members) > 1:
                circles.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circles():
    assert not _circles(_graph())
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The rule can fail: an import from core up to the gateway is reported."""
    path = tmp_path / "bad.py"
    path.write_text("from ..gateway.proxy import GatewayServer\n")
    known = {"same_defense.gateway.proxy"}
    (target,) = _imports("same_defense.core.bad", path, known)
    assert _layer(_unit(target)) > _layer(_unit("same_defense.core.bad"))
