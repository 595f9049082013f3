"""Tidy rows: exact comparison of values for filters, and atomic CSV writing."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from ..infra.io import atomic_path
from ..theory.scaling import exact


def same_value(a: Any, b: Any) -> bool:
    """a == b, numbers compared as exact decimals (0.1 equals '0.1' and '1/10')."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float, str, Fraction)) and not isinstance(a, bool):
        try:
            return exact(a) == exact(b)
        except (ValueError, ZeroDivisionError):
            return False
    return a == b


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike, columns: Sequence[str] | None = None) -> None:
    """Rows (dicts) as a CSV file with ``columns`` (default: the first row's keys), atomically."""
    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
