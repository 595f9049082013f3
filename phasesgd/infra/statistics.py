"""The replica mean and its standard error, written once: every table, figure and summary
of an ensemble reports these two numbers."""

from __future__ import annotations

import numpy as np


def mean_and_error(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` along ``axis`` (the replicas) and its standard error
    s/√R with the unbiased s (zero where there is one replica)."""
    values = np.asarray(values, dtype=float)
    count = values.shape[axis]
    mean = values.mean(axis)
    if count < 2:
        return mean, np.zeros_like(mean)
    return mean, values.std(axis, ddof=1) / np.sqrt(count)
