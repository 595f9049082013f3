"""Regions of the (δ, κ) phase diagram and their time scales (THEORY.md §5).

With γ = γ0 d^(−δ) and p = p0 d^κ, the ratio of the noise term to the drift term of
dQ/dt scales as d^(−(κ+δ)). Comparisons are made in exact rational arithmetic so
that points on a boundary (κ + δ = 0, −δ = (κ+1)/2) are classified exactly: a float
such as 0.1 is read as the decimal it prints as (1/10), not as its binary value.
"""

from __future__ import annotations

import enum
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

from .physics import learning_rate, student_width

Number = int | float | Fraction | str


class Region(str, enum.Enum):
    """One region of the phase diagram (THEORY.md §5, table)."""

    PERFECT = "perfect"  # κ + δ > 0: gradient flow on the risk
    PLATEAU = "plateau"  # κ + δ = 0: Saad & Solla equations
    BAD = "bad"  # κ < −δ < (κ+1)/2: noise-dominated, M frozen
    NO_ODE = "no_ode"  # −δ ≥ (κ+1)/2: SGD does not concentrate

    @property
    def has_ode(self) -> bool:
        return self is not Region.NO_ODE


def exact(x: Number) -> Fraction:
    """``x`` as an exact fraction, reading floats through their shortest repr."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, float):  # numpy floats too: read through the plain float's repr
        if not math.isfinite(x):
            raise ValueError(f"expected a finite number, got {x}")
        return Fraction(repr(float(x)))
    return Fraction(x)


def classify(kappa: Number, delta: Number) -> Region:
    """The region of (κ, δ): perfect if κ+δ > 0, plateau if κ+δ = 0, bad if
    κ < −δ < (κ+1)/2, and no ODE if −δ ≥ (κ+1)/2."""
    k, d = exact(kappa), exact(delta)
    if k + d > 0:
        return Region.PERFECT
    if k + d == 0:
        return Region.PLATEAU
    if -d < (k + 1) / 2:
        return Region.BAD
    return Region.NO_ODE


def natural_time_exponent(kappa: Number, delta: Number) -> Fraction:
    """ϑ of the region: κ + δ (perfect), 0 (plateau), 2(κ + δ) (bad learning).

    In the no-ODE region the bad-learning value 2(κ + δ) is extended, since no
    deterministic limit defines a time scale there.
    """
    k, d = exact(kappa), exact(delta)
    region = classify(k, d)
    if region is Region.PERFECT:
        return k + d
    if region is Region.PLATEAU:
        return Fraction(0)
    return 2 * (k + d)


@dataclass(frozen=True)
class Scaling:
    """How γ, p and time scale with d at one point (κ, δ) of the phase diagram.

    ``theta`` is ϑ in t = ν / d^(1+ϑ); ``None`` takes the region's natural value.
    """

    kappa: float = 0.0
    delta: float = 0.0
    theta: float | None = None

    @property
    def region(self) -> Region:
        return classify(self.kappa, self.delta)

    @property
    def time_exponent(self) -> float:
        """ϑ: the explicit value if set, else :func:`natural_time_exponent`."""
        if self.theta is not None:
            return float(self.theta)
        return float(natural_time_exponent(self.kappa, self.delta))

    def steps_per_unit_time(self, d: int) -> float:
        """τ = d^(1+ϑ): SGD steps per unit of t."""
        return float(d) ** (1.0 + self.time_exponent)

    def learning_rate(self, gamma0: float, d: int) -> float:
        """γ = γ0 d^(−δ)."""
        return learning_rate(gamma0, d, self.delta)

    def width(self, p0: int, d: int) -> int:
        """p = p0 d^κ, rounded to the nearest integer (at least 1)."""
        return student_width(p0, d, self.kappa)

    def drift_prefactor(self, gamma0: float, p: int, d: int) -> float:
        """τγ/(pd) = γ0 d^(ϑ−δ)/p: multiplies the I3 (drift) terms of §4."""
        return self.steps_per_unit_time(d) * self.learning_rate(gamma0, d) / (p * d)

    def noise_prefactor(self, gamma0: float, p: int, d: int) -> float:
        """τγ²/(p²d) = γ0² d^(ϑ−2δ)/p²: multiplies the I4 and noise terms of §4."""
        gamma = self.learning_rate(gamma0, d)
        return self.steps_per_unit_time(d) * gamma * gamma / (p * p * d)

    def warn_if_no_ode(self) -> None:
        if self.region is Region.NO_ODE:
            warnings.warn(
                f"(kappa={self.kappa}, delta={self.delta}) lies in the no-ODE region "
                "(-delta >= (kappa+1)/2): SGD does not concentrate there and no ODE "
                f"describes the run; time is reported with theta={self.time_exponent:g}.",
                stacklevel=2,
            )
