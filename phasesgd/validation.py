"""Checks on user input that fail early with the key's name and its allowed range."""

from __future__ import annotations

import math
from collections.abc import Iterable


def _fail(name: str, allowed: str, value: object) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def require_at_least(name: str, value: object, low: int) -> None:
    """``value`` is an integer ≥ ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(name, f"an integer >= {low}", value)


def require_positive(name: str, value: object) -> None:
    """``value`` is a finite number > 0."""
    if not _is_number(value) or not value > 0:
        _fail(name, "a finite number > 0", value)


def require_nonnegative(name: str, value: object) -> None:
    """``value`` is a finite number ≥ 0."""
    if not _is_number(value) or not value >= 0:
        _fail(name, "a finite number >= 0", value)


def require_finite(name: str, value: object) -> None:
    if not _is_number(value):
        _fail(name, "a finite number", value)


def require_choice(name: str, value: object, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        _fail(name, f"one of {list(choices)}", value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
