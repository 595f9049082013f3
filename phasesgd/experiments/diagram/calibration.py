"""Calibration of the diagram's 95 % intervals on synthetic cells with known exponents.

A synthetic cell imitates what a measurement records at each d (docs/phase_diagram.md,
"Calibration"):

- risk curves R_r(ν) = R0 (1 − ½(1 − e^(−g_r ν/τ))) (1 + η ξ_rν) with τ = τ0 d^(1+ϑ), a
  per-replica rate g_r = e^(σ_g ζ_r) (replicas learn at different speeds, the replica noise
  of ν*) and measurement noise η per point, on the measurement's own log grid of steps
  (:func:`~.probes.next_step`) up to 64 ν*; the crossing of the population-mean curve is then
  exactly ∝ d^(1+ϑ);
- diagonal entries Q_rj = 1 + σ d^(−c) s_r (√(1−ρ) ξ_rj + √ρ η_r) for p = round(p0 d^κ) units,
  with a per-replica scale s_r = e^(σ_s ζ'_r) and a per-replica shift η_r shared by the p units
  of a replica (as the units of one student share its err²); the population spread is exactly
  ∝ d^(−c).

:func:`coverage` repeats such cells and counts how often each interval contains the true
exponent: the replica bootstrap of :mod:`.bootstrap`, and as negative controls the fits' ±1
and ±1.96 standard errors (:func:`~.estimators.power_law`) and, for c, a bootstrap that
resamples the entries of each unit on their own (:func:`~.bootstrap.entry_bootstrap_spreads`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bootstrap import LEVEL, Point, bootstrap_cell, entry_bootstrap_spreads, interval, slopes
from .estimators import crossing_step, entry_spread, power_law
from .probes import next_step

QUICK_D = (16, 36, 81, 169)


@dataclass(frozen=True)
class Synthetic:
    """A synthetic cell: true exponents ``theta`` and ``concentration``, ``replicas`` per d, p =
    round(``p0`` d^``kappa``) entries per replica; noise: ``rate_noise`` σ_g, ``point_noise`` η,
    ``scale_noise`` σ_s, ``shared`` ρ (the share of an entry's variance common to its replica)."""

    theta: float = 0.0
    concentration: float = 0.5
    ds: tuple[int, ...] = QUICK_D
    replicas: int = 32
    kappa: float = 0.5
    p0: float = 1.0
    rate_noise: float = 0.3
    point_noise: float = 0.02
    scale_noise: float = 0.3
    shared: float = 0.5

    def point(self, rng: np.random.Generator, d: int) -> Point:
        """The synthetic measurement at one d."""
        r, tau = self.replicas, 20.0 * d ** (1 + self.theta)
        end, steps = 64 * tau * math.log(2), [0]
        while steps[-1] < end:
            steps.append(next_step(steps[-1]))
        nu = np.array(steps, dtype=float)
        rate = np.exp(self.rate_noise * rng.standard_normal((r, 1)))
        risk = 0.3 * (1 - 0.5 * (1 - np.exp(-rate * nu / tau)))
        risk = risk * (1 + self.point_noise * rng.standard_normal(risk.shape))
        risk[:, 0] = 0.3
        p = max(1, round(self.p0 * d**self.kappa))
        scale = np.exp(self.scale_noise * rng.standard_normal((r, 1)))
        noise = math.sqrt(1 - self.shared) * rng.standard_normal((r, p)) + math.sqrt(self.shared) * rng.standard_normal(
            (r, 1)
        )
        diag = 1 + 0.3 * d ** (-self.concentration) * scale * noise
        return Point(d, nu, risk, diag)


@dataclass(frozen=True)
class Coverage:
    """Fractions of ``repetitions`` synthetic cells whose interval contains the truth, and
    the intervals' mean widths (``*_width``)."""

    repetitions: int
    theta_bootstrap: float
    theta_se1: float
    theta_se196: float
    concentration_bootstrap: float
    concentration_se1: float
    concentration_se196: float
    concentration_entry_bootstrap: float
    theta_bootstrap_width: float
    concentration_bootstrap_width: float

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _inside(low: float, high: float, truth: float) -> bool:
    return bool(low <= truth <= high)


def coverage(cell: Synthetic = Synthetic(), repetitions: int = 200, resamples: int = 400, seed: int = 0) -> Coverage:
    """Repeat ``cell`` ``repetitions`` times (seeded) and count the intervals that contain its
    true ϑ and c: the replica bootstrap (``resamples`` per cell, ε = ¼), the fits' ±1 and ±1.96
    s.e., and for c the per-unit (entry) bootstrap."""
    rng = np.random.default_rng(seed)
    hits = np.zeros(7)
    widths = np.zeros(2)
    for _ in range(repetitions):
        points = [cell.point(rng, d) for d in cell.ds]
        boot = bootstrap_cell(points, 0.25, 0.5, rng, resamples)
        t_lo, t_hi = interval(boot.theta)
        c_lo, c_hi = interval(boot.concentration)
        nu = [crossing_step(p.steps, p.risk.mean(0), 0.25) for p in points]
        slope, t_se = power_law(cell.ds, nu)
        spreads = [entry_spread(p.diag_q) for p in points]
        c_slope, c_se = power_law(cell.ds, [s for s, _ in spreads], [e for _, e in spreads])
        theta, c = slope - 1, -c_slope
        wrong = np.stack([entry_bootstrap_spreads(p.diag_q, rng, resamples) for p in points], 1)
        e_lo, e_hi = interval(-slopes(cell.ds, wrong))
        hits += [
            _inside(t_lo, t_hi, cell.theta),
            _inside(theta - t_se, theta + t_se, cell.theta),
            _inside(theta - 1.96 * t_se, theta + 1.96 * t_se, cell.theta),
            _inside(c_lo, c_hi, cell.concentration),
            _inside(c - c_se, c + c_se, cell.concentration),
            _inside(c - 1.96 * c_se, c + 1.96 * c_se, cell.concentration),
            _inside(e_lo, e_hi, cell.concentration),
        ]
        widths += [t_hi - t_lo, c_hi - c_lo]
    f = hits / repetitions
    w = widths / repetitions
    return Coverage(repetitions, *(float(x) for x in f), float(w[0]), float(w[1]))


def calibration_table(cells: Sequence[Synthetic], repetitions: int = 1000, resamples: int = 400) -> list[dict]:
    """:func:`coverage` of each synthetic cell, as rows (the cell's exponents, p at the largest
    d, and the coverages): the numbers docs/phase_diagram.md quotes. ``LEVEL`` is nominal."""
    rows = []
    for i, cell in enumerate(cells):
        result = coverage(cell, repetitions, resamples, seed=i)
        p = max(1, round(cell.p0 * cell.ds[-1] ** cell.kappa))
        rows.append({"theta": cell.theta, "c": cell.concentration, "p_max": p, "level": LEVEL} | result.as_dict())
    return rows
