"""Checks for step parameters as they appear in a manifest (decoded JSON) or a training config.

Each check takes one value and returns what is wrong with it ("must be ..., got ...") or None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from runtime import limits
from runtime.validation import is_int, is_number

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Param:
    """One step parameter: its check, and its default when it may be omitted."""

    check: Check
    required: bool = False
    default: Any = None
    remedy: str = ""            # said after "missing (required)" when a required one is left out


def number(value: Any) -> str | None:
    return None if is_number(value) else f"must be a number, got {value!r}"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


def number_or_null(value: Any) -> str | None:
    return None if value is None or is_number(value) else f"must be a number or null, got {value!r}"


def _per_axis(value: Any, ok: Callable[[Any], bool]) -> bool:
    return isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(ok(v) for v in value)


def spacing_mm(value: Any) -> str | None:
    """A target spacing: 2 or 3 entries, each a number within runtime.limits' spacing bounds or null
    (the scan's own spacing along that axis, as a model run slice by slice keeps it), one at least a
    number."""
    if not _per_axis(value, lambda v: v is None or (is_number(v) and v > 0)) or all(v is None for v in value):
        return ("must be 2 or 3 positive numbers (one per spatial axis; null keeps the scan's spacing along "
                f"an axis), got {value!r}")
    return limits.spacing_problem(value)


def grid_shape(value: Any) -> str | None:
    """A target shape: 2 or 3 integers within runtime.limits' shape bounds."""
    if not _per_axis(value, lambda v: is_int(v) and v > 0):
        return f"must be 2 or 3 positive integers (one per spatial axis), got {value!r}"
    return limits.shape_problem(value)


def non_negative_int(value: Any) -> str | None:
    return None if is_int(value) and value >= 0 else f"must be an integer >= 0, got {value!r}"


def channel_list(value: Any) -> str | None:
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and value and all(is_int(v) and v >= 0 for v in value)
            and len(set(value)) == len(value)):
        return None
    return f"must be null or a non-empty list of distinct channel indices >= 0, got {value!r}"


def number_list(value: Any) -> str | None:
    if isinstance(value, (list, tuple)) and value and all(is_number(v) for v in value):
        return None
    return f"must be a non-empty list of numbers, one per channel, got {value!r}"


def positive_list(value: Any) -> str | None:
    if isinstance(value, (list, tuple)) and value and all(is_number(v) and v > 0 for v in value):
        return None
    return f"must be a non-empty list of numbers > 0, one per channel, got {value!r}"


def percentile_pair(value: Any) -> str | None:
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value)
            and 0 <= value[0] < value[1] <= 100):
        return None
    return f"must be null or [lo, hi] with 0 <= lo < hi <= 100, got {value!r}"


# The most landmarks a histogram_standardise step takes per channel.
MAX_LANDMARKS = 101


def _increasing(value: Any) -> bool:
    """2 to MAX_LANDMARKS numbers, strictly increasing."""
    return (isinstance(value, (list, tuple)) and 2 <= len(value) <= MAX_LANDMARKS and all(is_number(v) for v in value)
            and all(a < b for a, b in zip(value, value[1:])))


def increasing_percentiles(value: Any) -> str | None:
    """Percentiles for landmarks: 2 to MAX_LANDMARKS numbers in [0, 100], strictly increasing."""
    if _increasing(value) and 0 <= value[0] and value[-1] <= 100:
        return None
    return f"must be 2 to {MAX_LANDMARKS} strictly increasing numbers within [0, 100], got {value!r}"


def landmark_lists(value: Any) -> str | None:
    """One list of landmarks per channel, each 2 to MAX_LANDMARKS strictly increasing numbers."""
    if isinstance(value, (list, tuple)) and value and all(_increasing(row) for row in value):
        return None
    return (f"must be a list with one list per channel of 2 to {MAX_LANDMARKS} strictly increasing finite numbers "
            f"(learn them with `trainer landmarks`), got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def choice(*options: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}, got {value!r}"
    return check


def bounds(params: dict[str, Any], low: str, high: str, need_one: bool) -> list[str]:
    """Relations between a lower and an upper bound: at least one given (if needed), low <= high."""
    lo, hi = params.get(low), params.get(high)
    if need_one and lo is None and hi is None:
        return [f"{low}, {high}: give at least one bound (both are null)"]
    if lo is not None and hi is not None and lo > hi:
        return [f"{low}, {high}: {low} ({lo}) must not exceed {high} ({hi})"]
    return []
