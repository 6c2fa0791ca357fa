"""Markdown table cells and tables, one format for every report."""

from __future__ import annotations

import numpy as np


def cell(x: object, digits: int = 3) -> str:
    """A table cell: ``-`` for missing, yes/no for booleans, integers as such, floats rounded."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table as lines, with a blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return lines + [""]
