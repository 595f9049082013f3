"""95 % intervals of the measured diagram: a bootstrap over whole replicas.

The replicas of one point (κ, δ, d) are independent students; the entries of one replica
(its risk at every step, its p diagonal entries Q_jj) are not independent of each other, since
they share the replica's history (the same err² drives every unit of a student). A resample
therefore draws R whole replicas with replacement at each d, independently across d, and
recomputes every estimate from them: the replica-mean risk curve and its crossing ν*, the
pooled spread of Q_jj, the late level of the risk; then the fits over d: ϑ_observed from ν*(d),
the concentration exponent c from the spreads, the d-trend of the level. The interval is the
central 95 % of the resampled values (percentile bootstrap). docs/phase_diagram.md gives
its calibration on synthetic data with known exponents.

Everything here is vectorised over the resamples: a resample is a row of replica counts (B, R),
so a resampled mean is one matrix product. The random draws come from a generator seeded
from the cell (:func:`cell_rng`), so an analysis is reproducible.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000  # B: resamples per cell
LEVEL = 0.95  # the intervals' nominal coverage


def cell_rng(seed: int, *key: object) -> np.random.Generator:
    """A generator seeded from the setup's ``seed`` and the cell's ``key`` (e.g. κ, δ, source):
    the same cell gets the same resamples on every analysis, another cell others."""
    digest = zlib.crc32("|".join(str(k) for k in key).encode())
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, digest])


def replica_counts(rng: np.random.Generator, replicas: int, resamples: int = RESAMPLES) -> np.ndarray:
    """(B, R) counts: how often each of R replicas is drawn in each of B resamples of R."""
    drawn = rng.integers(0, replicas, (resamples, replicas)) + replicas * np.arange(resamples)[:, None]
    return np.bincount(drawn.ravel(), minlength=resamples * replicas).reshape(resamples, replicas).astype(float)


def resampled_mean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The mean over replicas of ``values`` (R, ...) in each resample: (B, ...)."""
    v = np.asarray(values, dtype=float)
    flat = counts @ v.reshape(v.shape[0], -1) / counts.shape[1]
    return flat.reshape((counts.shape[0], *v.shape[1:]))


def crossing_steps(steps: np.ndarray, curves: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """ν* of each row of ``curves`` (B, T) on ``steps`` (T,), as
    :func:`~.estimators.crossing_step` computes it for one curve (first |R(ν)/R(0) − 1| ≥ ε,
    interpolated in log ν, linearly from ν = 0), and the sign of R − R(0) at the first
    measurement past the crossing (+1 the risk rose, −1 it fell). NaN and 0 where a row never
    crosses."""
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    steps = np.asarray(steps, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        change = np.abs(curves / curves[:, :1] - 1.0)
    above = change >= epsilon
    crossed = above.any(1)
    i = np.where(crossed, above.argmax(1), 0)
    rows = np.arange(curves.shape[0])
    j = np.maximum(i - 1, 0)
    a, b = steps[j], steps[i]
    fa, fb = change[rows, j], change[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(fb > fa, (epsilon - fa) / (fb - fa), 1.0)
        la, lb = np.log(np.where(a > 0, a, 1.0)), np.log(np.where(a > 0, b, 1.0))
    nu = np.where(a > 0, np.exp(la + w * (lb - la)), a + w * (b - a))
    nu = np.where(i == 0, steps[0], nu)
    sign = np.sign(curves[rows, i] - curves[:, 0])
    return np.where(crossed, nu, np.nan), np.where(crossed, sign, 0).astype(int)


def pooled_spreads(counts: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """√(mean_j var_r(entries[:, j])) (ddof = 1) of each resample of the replicas (rows of
    ``entries``, (R, n)): :func:`~.estimators.entry_spread` of the resampled array. NaN if an
    entry is not finite."""
    e = np.asarray(entries, dtype=float)
    if e.ndim != 2 or e.shape[0] < 2 or not np.isfinite(e).all():
        return np.full(counts.shape[0], np.nan)
    r = e.shape[0]
    centred = e - e.mean(0)  # the spread does not depend on the origin; centring avoids cancellation
    m1, m2 = resampled_mean(counts, centred), resampled_mean(counts, centred**2)
    var = np.clip(m2 - m1**2, 0.0, None) * r / (r - 1)
    return np.sqrt(var.mean(1))


def slopes(d: Sequence[float], y: np.ndarray) -> np.ndarray:
    """Least-squares slope of log y against log d for each row of ``y`` (B, n), over the row's
    finite positive values; NaN for a row with fewer than two distinct d among them."""
    x = np.log(np.asarray(d, dtype=float))
    y = np.atleast_2d(np.asarray(y, dtype=float))
    ok = np.isfinite(y) & (y > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        logy = np.where(ok, np.log(np.where(ok, y, 1.0)), 0.0)
        n = ok.sum(1)
        xm = (ok * x).sum(1) / n
        ym = logy.sum(1) / n
        xc = np.where(ok, x - xm[:, None], 0.0)
        sxx = (xc**2).sum(1)
        slope = (xc * (logy - ym[:, None])).sum(1) / sxx
    return np.where((n >= 2) & (sxx > 1e-12), slope, np.nan)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` of ``samples`` (percentile bootstrap). A non-finite sample (a
    resample whose estimate does not exist) counts against both ends: as −∞ for the low one,
    +∞ for the high one; NaN, NaN when none is finite."""
    s = np.asarray(samples, dtype=float)
    finite = np.isfinite(s)
    if not finite.any():
        return math.nan, math.nan
    tail = (1 - level) / 2
    low = np.quantile(np.where(finite | (s == np.inf), s, -np.inf), tail, method="lower")
    high = np.quantile(np.where(finite | (s == -np.inf), s, np.inf), 1 - tail, method="higher")
    return float(low), float(high)


@dataclass(frozen=True)
class Point:
    """What the bootstrap reads of one d: the replicas' risk curves (R, T) on ``steps``, their
    Q_jj (R, p) at the matched time, and whether the measurement failed."""

    d: int
    steps: np.ndarray
    risk: np.ndarray
    diag_q: np.ndarray
    failed: bool = False


@dataclass(frozen=True, eq=False)
class CellBootstrap:
    """B resampled values of each fitted quantity of a cell (NaN where it does not exist): ϑ
    (``theta``), c (``concentration``), the late level over R(0) at the largest d
    (``level_ratio``) and its d-slope (``level_d_slope``); ``sign_changes``: the fraction of
    resamples whose crossings do not all have one sign; ``nu`` and ``sign`` (B, n): each
    resample's ν* and crossing sign per d (for fits over some of the d values)."""

    theta: np.ndarray
    concentration: np.ndarray
    level_ratio: np.ndarray
    level_d_slope: np.ndarray
    sign_changes: float
    nu: np.ndarray | None = None
    sign: np.ndarray | None = None

    def theta_over(self, ds: Sequence[float], columns: Sequence[int]) -> np.ndarray:
        """ϑ fitted over the d values ``columns`` only (``ds`` all of them), NaN for a resample
        whose crossings change sign among them."""
        if self.nu is None or self.sign is None:
            return np.full(self.theta.shape, np.nan)
        cols = list(columns)
        sign = self.sign[:, cols]
        mixed = (sign > 0).any(1) & (sign < 0).any(1)
        return np.where(mixed, np.nan, slopes(np.asarray(ds, dtype=float)[cols], self.nu[:, cols]) - 1)


def window_mask(steps: np.ndarray, decades: float) -> np.ndarray:
    """The last ``decades`` decades of ν of a trace (ν > 0), as
    :func:`~.cells.late_level` averages them."""
    end = float(steps[-1])
    lo = end * 10 ** (-decades)
    return (steps > 0) & (steps >= lo * (1 - 1e-9)) & (steps <= end * (1 + 1e-9))


def bootstrap_cell(
    points: Sequence[Point], epsilon: float, window: float, rng: np.random.Generator, resamples: int = RESAMPLES
) -> CellBootstrap:
    """Resample the replicas of every d of one cell (independently across d) ``resamples``
    times and refit: ν*(d) → ϑ = slope − 1, the pooled Q_jj spread → c = −slope, the late
    level (mean of the replica-mean risk over the last ``window`` decades) → its ratio to R(0)
    at the largest d and its d-slope. A resample whose crossings rise at some d and fall at
    others gets ϑ = NaN (its clock mixes two mechanisms). A failed point makes everything NaN."""
    points = sorted(points, key=lambda p: p.d)
    ds = [p.d for p in points]
    nu, spread, level, sign = (np.full((resamples, len(points)), np.nan) for _ in range(4))
    initial = np.full(resamples, np.nan)
    if any(p.failed for p in points):
        nan = np.full(resamples, np.nan)
        return CellBootstrap(nan, nan, nan, nan, math.nan)
    for k, p in enumerate(points):
        risk = np.asarray(p.risk, dtype=float)
        counts = replica_counts(rng, risk.shape[0], resamples)
        if np.isfinite(risk).all():
            curves = resampled_mean(counts, risk)
            nu[:, k], sign[:, k] = crossing_steps(p.steps, curves, epsilon)
            level[:, k] = curves[:, window_mask(np.asarray(p.steps), window)].mean(1)
            if k == len(points) - 1:
                initial = curves[:, 0]
        spread[:, k] = pooled_spreads(counts, p.diag_q)
    mixed = (sign > 0).any(1) & (sign < 0).any(1)  # a resample whose clock mixes a rise and a fall
    theta = np.where(mixed, np.nan, slopes(ds, nu) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = level[:, -1] / initial
    return CellBootstrap(theta, -slopes(ds, spread), ratio, slopes(ds, level), float(mixed.mean()), nu, sign)


def entry_bootstrap_spreads(entries: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """The wrong bootstrap, kept as the calibration's negative control: each column j of
    ``entries`` (R, n) resampled over replicas on its own, as if the entries of one replica
    were independent. (B,) pooled spreads."""
    e = np.asarray(entries, dtype=float)
    r, n = e.shape
    var = np.empty((resamples, n))
    for j in range(n):
        counts = replica_counts(rng, r, resamples)
        col = e[:, j] - e[:, j].mean()
        var[:, j] = np.clip(counts @ col**2 / r - (counts @ col / r) ** 2, 0, None) * r / (r - 1)
    return np.sqrt(var.mean(1))
