"""Checks on user input that fail early with the key's name and its allowed range.

Every check raises :class:`ConfigError` (a ``ValueError``) with a one-line message; the
scripts print that line and exit with status 2, without a traceback. Each config key is
checked in one place: by the constructor that consumes it (``Teacher``, ``OnlineSGD``,
``GaussianStream``, the schedules, ...), with the checks of this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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


def require_positive_or_null(name: str, value: object) -> None:
    """``value`` is None (no limit) or a finite number > 0."""
    if value is not None and (not _is_number(value) or not value > 0):
        _fail(name, "a finite number > 0 or null", value)


def require_at_least_or_null(name: str, value: object, low: int) -> None:
    """``value`` is None (no limit) or an integer ≥ ``low``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        _fail(name, f"an integer >= {low} or null", value)


def require_bool(name: str, value: object) -> None:
    """``value`` is true or false (a string such as 'no' would otherwise count as true)."""
    if not isinstance(value, bool):
        _fail(name, "true or false", value)


def require_choice(name: str, value: object, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if isinstance(value, bool) or value not in choices:  # True == 1 must not pass for 1
        _fail(name, f"one of {list(choices)}", value)


def require_equal(name: str, value: object, expected: int, why: str) -> None:
    """``value`` is the integer ``expected``, the only value the run supports (``why``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value != expected:
        raise ConfigError(f"{name} must be {expected} ({why}), got {value!r}")


def require_numbers(
    name: str, value: object, length: int | None = None, positive: bool = False, increasing: bool = False
) -> list[float]:
    """``value`` is a list of finite numbers (``length`` of them, each > 0 if ``positive``,
    strictly increasing if ``increasing``); returns them as floats."""
    values = value.tolist() if hasattr(value, "tolist") else value  # numpy arrays, tensors
    what = "a list of " + (f"{length} " if length is not None else "") + ("positive " if positive else "finite ")
    what += "numbers" + (", strictly increasing" if increasing else "")
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        _fail(name, what, value)
    values = list(values)
    if (
        (length is not None and len(values) != length)
        or not all(_is_number(v) and (v > 0 or not positive) for v in values)
        or (increasing and any(a >= b for a, b in zip(values, values[1:])))
    ):
        _fail(name, what, value)
    return [float(v) for v in values]


@contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Name the keys of a nested block in full: a :class:`ConfigError` raised inside, whose
    message starts with a key of the block (``rtol must be …``), is raised again with
    ``prefix.`` before it (``callbacks.ode.rtol must be …``)."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{prefix}.{err}") from None


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
