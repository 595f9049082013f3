"""Log-spaced measurement times and the chunks of SGD steps between them."""

from __future__ import annotations

import math

import numpy as np

from ..infra.validation import require_at_least, require_positive


def log_times(t_max: float, t_min: float = 1e-2, per_decade: int = 10) -> np.ndarray:
    """0, then ``per_decade`` log-spaced times per decade from ``t_min`` to ``t_max``."""
    require_positive("t_max", t_max)
    require_positive("measure.t_min", t_min)
    require_at_least("measure.points_per_decade", per_decade, 1)
    if t_min >= t_max:
        return np.array([0.0, t_max])
    decades = math.log10(t_max / t_min)
    n = max(2, math.ceil(decades * per_decade) + 1)
    return np.concatenate([[0.0], np.logspace(math.log10(t_min), math.log10(t_max), n)])


def measurement_steps(t_max: float, steps_per_unit: float, t_min: float = 1e-2, per_decade: int = 10) -> np.ndarray:
    """SGD step counts ν = round(t τ) of :func:`log_times`, unique and sorted; the last is ν_max."""
    times = log_times(t_max, t_min, per_decade)
    steps = np.unique(np.rint(times * steps_per_unit).astype(np.int64))
    return steps if steps[-1] > 0 else np.array([0, 1], dtype=np.int64)


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
