"""How every report writes numbers, intervals, epsilons and markdown tables (results.md, audit.md, draws, cards).

One place, so that two reports showing the same quantity show it the same way. Pure string functions: no I/O,
and no import of the pipeline (the library's reports use them too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

_ALIGNMENTS = {"l": "---", "r": "---:"}


def number(x: Any, digits: int | None = None) -> str:
    """`x` as a table shows it: with `digits` decimals when given; else a float with 4 decimals (3 significant
    digits from 1e4 up, where decimals are noise), and anything else (int, bool, None, str) as ``str(x)``."""
    if digits is not None:
        return f"{x:.{digits}f}"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def significant(x: float, digits: int) -> str:
    """`x` to `digits` significant digits, e.g. '0.001' or '1e+06' (settings whose scale varies: noise, rates)."""
    return f"{x:.{digits}g}"


def with_interval(value: Any, interval: Sequence[Any] | None, digits: int | None = None) -> str:
    """A value and its interval, e.g. '0.6500 [0.5712, 0.7263]' (the value alone when there is no interval);
    every number as :func:`number` writes it with `digits`."""
    if interval is None or len(interval) == 0:
        return number(value, digits)
    return f"{number(value, digits)} [{number(interval[0], digits)}, {number(interval[1], digits)}]"


def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """A mean and its standard deviation, e.g. '12.00 ± 2.00'."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def thousands(n: int) -> str:
    """A count with thousands separators, e.g. '1,234,567' (parameter counts)."""
    return f"{n:,}"


def epsilon_number(epsilon: float, digits: int = 2) -> str:
    """Epsilon as a bare number: 'inf' when it is not finite (no guarantee), else `digits` decimals."""
    return "inf" if not math.isfinite(epsilon) else f"{epsilon:.{digits}f}"


def epsilon_cell(epsilon: float) -> str:
    """Epsilon as a results table shows it: inf is not private, 0 never saw the private data."""
    if not math.isfinite(epsilon):
        return "inf (not private)"
    return "0 (no private data)" if epsilon == 0 else f"{epsilon:.3f}"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> list[str]:
    """The lines of a markdown table: the header, the alignment row, then one line per row.

    `align` has one letter per column, 'l' (left, the default) or 'r' (right, for numbers); cells that are not
    strings are written by :func:`number`.
    """
    align = align if align is not None else "l" * len(header)
    if len(align) != len(header) or set(align) - set(_ALIGNMENTS):
        raise ValueError(
            f"align={align!r} must have one letter per column ({len(header)}: {list(header)}), each 'l' or 'r'."
        )
    lines = [_row(header), "|" + "".join(f"{_ALIGNMENTS[a]}|" for a in align)]
    return lines + [_row([number(c) for c in row]) for row in rows]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
