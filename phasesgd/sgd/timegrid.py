"""Log-spaced measurement times and the chunks of SGD steps between them.

**Time below one step.** t = ν/τ with τ = d^(1+ϑ) SGD steps per unit of t. Where 1 + ϑ ≤ 0
(ϑ = 2(κ+δ) < −1 extends into the no-ODE region, or an explicit ``theta``), τ ≤ 1: a unit of
t holds at most one SGD step. Such runs are legitimate points of the phase diagram, so time
is counted in whole SGD steps: each measurement is at ν = round(t τ), never past
ν_max = the most steps with ν/τ ≤ t_max (:func:`last_step`), so that no recorded t exceeds
t_max; measurement times that fall on the same step are measured once. A run whose t_max
holds no whole step (t_max τ < 1) is refused, naming the keys that set τ.
"""

from __future__ import annotations

import math

import numpy as np

from ..infra.validation import ConfigError, require_at_least, require_positive


def log_times(t_max: float, t_min: float = 1e-2, per_decade: int = 10) -> np.ndarray:
    """0, then ``per_decade`` log-spaced times per decade from ``t_min`` to ``t_max``."""
    require_positive("t_max", t_max)
    require_positive("measure.t_min", t_min)
    require_at_least("measure.points_per_decade", per_decade, 1)
    if not t_min < t_max:
        raise ConfigError(
            f"measure.t_min must be below t_max (the first measurement after t = 0 lies inside the run), "
            f"got measure.t_min={t_min:g} >= t_max={t_max:g}"
        )
    decades = math.log10(t_max / t_min)
    n = max(2, math.ceil(decades * per_decade) + 1)
    return np.concatenate([[0.0], np.logspace(math.log10(t_min), math.log10(t_max), n)])


def last_step(t_max: float, steps_per_unit: float) -> int:
    """ν_max, the most whole SGD steps with t = ν/τ ≤ t_max, in the float arithmetic that
    records t (``steps / steps_per_unit``): round(t_max τ), one less where that lands past t_max."""
    nu = int(np.rint(t_max * steps_per_unit))
    for _ in range(4):  # one step back suffices below 2**53 steps; float(ν) is coarser above
        if nu <= 0 or nu / steps_per_unit <= t_max:
            break
        nu -= 1
    return max(nu, 0)


def measurement_steps(t_max: float, steps_per_unit: float, t_min: float = 1e-2, per_decade: int = 10) -> np.ndarray:
    """SGD step counts ν = round(t τ) of :func:`log_times`, at most ν_max = :func:`last_step`,
    unique and sorted, the last ν_max (see the module docstring for τ ≤ 1). Refuses a t_max
    that holds no whole step."""
    times = log_times(t_max, t_min, per_decade)
    last = last_step(t_max, steps_per_unit)
    if last < 1:
        steps = t_max * steps_per_unit
        remedy = f"raise t_max to at least {1 / steps_per_unit:.4g}, " if steps_per_unit > 0 else ""
        raise ConfigError(
            f"t_max={t_max:g} holds {steps:.3g} SGD steps at tau = d^(1+theta) = {steps_per_unit:.3g} steps per unit "
            f"of t (set by d, kappa, lr.delta and theta), less than one: {remedy}"
            "or raise theta (theta=-1 counts t in SGD steps)"
        )
    steps = np.minimum(np.rint(times[:-1] * steps_per_unit), last).astype(np.int64)
    return np.unique(np.append(steps, last))  # the last at t_max itself, not at its log-spaced float


def chunk_boundaries(stops: np.ndarray, max_chunk: int, start: int = 0) -> list[int]:
    """Step boundaries from ``start`` to ``stops[-1]`` that hit every measurement step and
    never span more than ``max_chunk`` steps (chunk by chunk, :func:`next_chunk`).
    Independent of the number of replicas, so a replica draws its data in the same chunks
    whether it runs alone or batched."""
    require_at_least("data.chunk_steps", max_chunk, 1)
    bounds = [int(start)]
    while steps := next_chunk(stops, max_chunk, bounds[-1]):
        bounds.append(bounds[-1] + steps)
    return bounds


def next_chunk(stops: np.ndarray, max_chunk: int, start: int) -> int:
    """Steps in the chunk that starts at ``start``: up to the next measurement step, at most
    ``max_chunk``, and 0 past the last one. A binary search, so that asking at every chunk
    of a long run does not cost time quadratic in its length."""
    following = int(np.searchsorted(stops, start, side="right"))
    return 0 if following == len(stops) else min(int(max_chunk), int(stops[following]) - start)
