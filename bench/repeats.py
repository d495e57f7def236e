"""Repeats of one load point: the median as the number, the spread beside it.

One run of a load point is one draw: whether a baseline's per-role caches thrash at a given KV
size depends on timing (docs/benchmarks.md), so a table reports the median of the repeats and
their min..max. Ratios are taken per repeat (the two systems ran the same arrivals, with the
same seed) and then summarized the same way. Pure: no engines, no I/O.
"""

from __future__ import annotations

import statistics
from typing import Any

SUMMED = ("errors",)  # counts that add up over repeats instead of being summarized


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def summarize_repeats(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """One line per repeat (same keys) -> one line: numbers are the median, ``spread`` has
    each number's (min, max), ``repeats`` how many; other values are the first line's."""
    if not lines:
        raise ValueError("no repeats to summarize")
    out: dict[str, Any] = {"repeats": len(lines), "spread": {}}
    for key in lines[0]:
        values = [line.get(key) for line in lines]
        numbers = [v for v in values if _is_number(v)]
        if key in SUMMED:
            out[key] = sum(numbers)
        elif all(v == values[0] for v in values):  # the point's own settings: load, KV size
            out[key] = values[0]
        elif numbers and len(numbers) == len(values):
            out[key] = statistics.median(numbers)
            out["spread"][key] = (min(numbers), max(numbers))
        elif numbers:
            out[key] = None  # a repeat could not measure it: no median of the others
        else:
            out[key] = values[0]
    return out


def with_spread(line: dict[str, Any], key: str, fmt: str, suffix: str = "") -> str:
    """``median`` or ``median (min-max)`` for a table cell; "-" when there is no value."""
    value = line.get(key)
    if value is None:
        return "-"
    text = f"{format(value, fmt)}{suffix}"
    low_high = (line.get("spread") or {}).get(key)
    if line.get("repeats", 1) > 1 and low_high is not None:
        low, high = (format(x, fmt) for x in low_high)
        if low != high:
            text += f" ({low}-{high}{suffix})"
    return text
