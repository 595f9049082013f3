"""Estimators of the measured phase diagram (docs/theory.md §5, "Measuring the diagram").

Each takes plain arrays (risk curves, order-parameter entries) and knows nothing about the
theory's regions:

- :func:`crossing_step`: ν*, the number of SGD steps after which the replica-mean risk has
  changed by a fixed relative amount ε, |R̄(ν)/R̄(0) − 1| ≥ ε;
- :func:`power_law`: the exponent and its standard error of y ∝ d^s from a least-squares
  fit of log y against log d; ϑ_observed = s − 1 for y = ν*(d) (ν* ∝ d^(1+ϑ)) and
  c = −s for y = the replica spread (spread ∝ d^(−c));
- :func:`entry_spread`: the replica-to-replica spread of single entries, pooled over
  the entries (e.g. the diagonal Q_jj pooled over j), with the standard error of its log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def crossing_step(steps: np.ndarray, risk: np.ndarray, epsilon: float) -> float:
    """ν*: the first step at which |R̄(ν)/R̄(0) − 1| reaches ``epsilon``, interpolated
    linearly in log ν between the two measurements around the crossing (linearly in ν when
    the earlier one is ν = 0). ``risk`` is the replica mean on ``steps`` (steps[0] = 0).
    NaN if it never crosses."""
    change = np.abs(np.asarray(risk, dtype=float) / float(risk[0]) - 1.0)
    above = np.flatnonzero(change >= epsilon)
    if above.size == 0:
        return math.nan
    i = int(above[0])
    if i == 0:
        return float(steps[0])
    a, b = float(steps[i - 1]), float(steps[i])
    fa, fb = float(change[i - 1]), float(change[i])
    w = (epsilon - fa) / (fb - fa) if fb > fa else 1.0
    if a <= 0:
        return a + w * (b - a)
    return math.exp(math.log(a) + w * (math.log(b) - math.log(a)))


def power_law(d: Sequence[float], y: Sequence[float], log_se: Sequence[float] | None = None) -> tuple[float, float]:
    """Slope s of log y = s log d + c by least squares, and its standard error.

    The standard error is the larger of the residual-based one (n − 2 degrees of freedom)
    and the one propagated from ``log_se`` (known standard errors of each log y), so that
    neither an accidentally good fit nor noisy points understate it. NaN without two finite
    points; the error is NaN with two points and no ``log_se``."""
    x, v = np.log(np.asarray(d, dtype=float)), np.asarray(y, dtype=float)
    ok = np.isfinite(v) & (v > 0) & np.isfinite(x)
    if log_se is not None:
        ok &= np.isfinite(np.asarray(log_se, dtype=float))
    if np.unique(x[ok]).size < 2:
        return math.nan, math.nan
    x, logy = x[ok], np.log(v[ok])
    xc = x - x.mean()
    sxx = float((xc**2).sum())
    slope = float((xc * (logy - logy.mean())).sum() / sxx)
    n = x.size
    se_fit = math.nan
    if n > 2:
        residual = logy - logy.mean() - slope * xc
        se_fit = math.sqrt(float((residual**2).sum()) / (n - 2) / sxx)
    se_points = math.nan
    if log_se is not None:
        w = np.asarray(log_se, dtype=float)[ok]
        se_points = math.sqrt(float(((xc / sxx) ** 2 * w**2).sum()))
    candidates = [s for s in (se_fit, se_points) if math.isfinite(s)]
    return slope, (max(candidates) if candidates else math.nan)


def entry_spread(entries: np.ndarray) -> tuple[float, float]:
    """Spread of single entries across replicas, pooled over entries: entries (R, n) —
    R replicas of n entries each (e.g. Q_jj, j = 1..p) — gives
    s = √(mean_j var_r(entries[:, j])) and the standard error of log s,
    ≈ 1/√(2 n_eff) with n_eff = n (R − 1) pooled degrees of freedom (Gaussian entries;
    entries of one replica are treated as independent). NaN for fewer than 2 replicas or
    non-finite entries."""
    e = np.asarray(entries, dtype=float)
    if e.ndim != 2 or e.shape[0] < 2 or not np.isfinite(e).all():
        return math.nan, math.nan
    spread = math.sqrt(float(e.var(axis=0, ddof=1).mean()))
    dof = e.shape[1] * (e.shape[0] - 1)
    return spread, 1.0 / math.sqrt(2.0 * dof)
