"""Checks on user input that fail early with the key's name and its allowed range.

Every check raises :class:`ConfigError` (a ``ValueError``) with a one-line message; the
scripts print that line and exit with status 2, without a traceback. Each config key is
checked in one place: by the constructor that consumes it (``Teacher``, ``OnlineSGD``,
``GaussianStream``, the schedules, ...), with the checks of this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import torch

# The largest SGD-step count a run may plan: int64 with a factor 2 of headroom for the
# rounding of the log-spaced measurement grid.
MAX_SGD_STEPS = 2**62


class ConfigError(ValueError):
    """A config value or a command-line argument outside its allowed range (one line)."""


def _fail(name: str, allowed: str, value: object) -> None:
    raise ConfigError(f"{name} must be {allowed}, got {value!r}")


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


def require_finite_or_null(name: str, value: object) -> None:
    if value is not None and not _is_number(value):
        _fail(name, "a finite number or null", value)


def require_choice(name: str, value: object, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        _fail(name, f"one of {list(choices)}", value)


def require_step_count(steps: float, what: str) -> None:
    """The planned number of SGD steps fits the int64 step counter (:data:`MAX_SGD_STEPS`)."""
    if not steps < MAX_SGD_STEPS:  # also catches inf and nan
        raise ConfigError(
            f"{what} gives {steps:.3g} SGD steps, more than the int64 step counter holds (< {MAX_SGD_STEPS:.3g})"
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def available_memory(device: torch.device | str) -> int:
    """Bytes that a new allocation may take on ``device``: free CUDA memory, or the host's
    ``MemAvailable`` (Linux; elsewhere the physical memory)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def require_memory(needed: float, available: float, what: str, remedy: str) -> None:
    """``needed`` bytes fit into ``available`` ones; else one line with both in GB."""
    if not needed <= available:
        raise ConfigError(
            f"{what} need about {needed / 1e9:.3g} GB, but only {available / 1e9:.3g} GB are available: {remedy}"
        )
