"""Regions of the (δ, κ) phase diagram and their time scales (docs/theory.md §5).

With γ = γ0 d^(−δ) and p = p0 d^κ, one SGD step moves Q by about (γ/p)/d through the
drift (I3) terms and by (γ/p)²/d through the noise (I4, J2) terms of dQ/dt. Their ratio
γ/p ∝ d^(−(κ+δ)) separates perfect learning (κ + δ > 0), the plateau line (κ + δ = 0)
and noise-dominated learning (κ + δ < 0); a deterministic limit exists only while the
noise increment (γ/p)²/d = d^(−1−2(κ+δ)) vanishes, i.e. −δ < κ + ½. Comparisons are
made in exact rational arithmetic so that points on a boundary (κ + δ = 0,
−δ = κ + ½) are classified exactly: a float such as 0.1 is read as the decimal it
prints as (1/10), not as its binary value.
"""

from __future__ import annotations

import enum
import math
import numbers
import warnings
from dataclasses import dataclass
from fractions import Fraction

Number = int | float | Fraction | str


def student_width(p0: int | float, d: int, kappa: float) -> int:
    """p = round(p0 d^κ), at least 1 (p = p0 at κ = 0)."""
    return max(1, round(float(p0) * float(d) ** float(kappa)))


def learning_rate(gamma0: float, d: int, delta: float) -> float:
    """γ = γ0 d^(−δ)."""
    return float(gamma0) * float(d) ** (-float(delta))


class Region(str, enum.Enum):
    """One region of the phase diagram (docs/theory.md §5, table)."""

    PERFECT = "perfect"  # κ + δ > 0: the drift wins, gradient flow on the risk
    PLATEAU = "plateau"  # κ + δ = 0: drift and noise balance, Saad & Solla equations
    BAD = "bad"  # κ < −δ < κ + ½: noise-dominated, M frozen, the noise step still vanishes
    NO_ODE = "no_ode"  # −δ ≥ κ + ½: the noise step (γ/p)²/d does not vanish, no concentration

    @property
    def has_ode(self) -> bool:
        return self is not Region.NO_ODE


def exact(x: Number) -> Fraction:
    """``x`` as an exact fraction, reading floats through their shortest repr."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, numbers.Real) and not isinstance(x, numbers.Rational):
        if not math.isfinite(x):
            raise ValueError(f"expected a finite number, got {x}")
        # float and numpy.float64 through the plain float's repr; numpy.float32 through
        # its own shortest decimal (float() would expose its binary value, 0.1 → 0.10000000149)
        return Fraction(repr(float(x)) if isinstance(x, float) else str(x))
    return Fraction(x)


def _argument(name: str, x: Number) -> Fraction:
    """``exact(x)``, refusing what is not a finite number with one line naming ``name``."""
    try:
        return exact(x)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise ValueError(
            f"{name} must be a finite number (int, float, Fraction or a string such as '-3/4'), got {x!r}"
        ) from err


def _point(kappa: Number, delta: Number) -> tuple[Fraction, Fraction]:
    """(κ, δ) as exact fractions; κ must be ≥ 0 (a width p = p0 d^κ that does not shrink)."""
    k = _argument("kappa", kappa)
    if k < 0:
        raise ValueError(f"kappa must be >= 0 (width p = p0 d^kappa), got {kappa!r}")
    return k, _argument("delta", delta)


def no_ode_boundary(kappa: Number) -> Fraction:
    """−δ on the corrected no-ODE line, κ + ½: where the noise step (γ/p)²/d stops vanishing."""
    k, _ = _point(kappa, 0)
    return k + Fraction(1, 2)


def published_no_ode_boundary(kappa: Number) -> Fraction:
    """−δ on the line (κ + 1)/2 of the paper's published code (it meets κ + ½ only at κ = 0,
    and for κ ≥ 1 it lies inside the perfect region: drawn for comparison, never used)."""
    k, _ = _point(kappa, 0)
    return (k + 1) / 2


def classify(kappa: Number, delta: Number) -> Region:
    """The region of (κ, δ) (docs/theory.md §5): perfect if κ + δ > 0, plateau if κ + δ = 0,
    bad if κ < −δ < κ + ½, and no ODE if −δ ≥ κ + ½. The four conditions are disjoint and
    cover every κ ≥ 0 and δ; κ < 0 is refused."""
    k, d = _point(kappa, delta)
    if k + d > 0:
        return Region.PERFECT
    if k + d == 0:
        return Region.PLATEAU
    if -d < no_ode_boundary(k):
        return Region.BAD
    return Region.NO_ODE


def natural_time_exponent(kappa: Number, delta: Number) -> Fraction:
    """ϑ in t = ν/d^(1+ϑ) for the region: κ + δ (perfect), 0 (plateau), 2(κ + δ) (bad).

    ϑ is continuous across both boundaries of the plateau line (it is 0 there). In the
    no-ODE region the bad-learning value 2(κ + δ) is extended, since no deterministic
    limit defines a time scale there; there 1 + ϑ ≤ 0, so a unit of t is at most one
    SGD step (exactly one on the boundary −δ = κ + ½).
    """
    k, d = _point(kappa, delta)
    region = classify(k, d)
    if region is Region.PERFECT:
        return k + d
    if region is Region.PLATEAU:
        return Fraction(0)
    return 2 * (k + d)


@dataclass(frozen=True)
class Scaling:
    """How γ, p and time scale with d at one point (κ, δ) of the phase diagram.

    ``theta`` is ϑ in t = ν / d^(1+ϑ); ``None`` takes the region's natural value. κ ≥ 0
    and a finite δ (and ϑ, if given) are checked at construction.
    """

    kappa: float = 0.0
    delta: float = 0.0
    theta: float | None = None

    def __post_init__(self) -> None:
        _point(self.kappa, self.delta)
        if self.theta is not None:
            _argument("theta", self.theta)

    @property
    def region(self) -> Region:
        return classify(self.kappa, self.delta)

    @property
    def exact_time_exponent(self) -> Fraction:
        """ϑ as an exact fraction: the explicit value if set, else :func:`natural_time_exponent`."""
        if self.theta is not None:
            return exact(self.theta)
        return natural_time_exponent(self.kappa, self.delta)

    @property
    def time_exponent(self) -> float:
        """ϑ in t = ν/d^(1+ϑ), as a float (see :attr:`exact_time_exponent`)."""
        return float(self.theta) if self.theta is not None else float(self.exact_time_exponent)

    def steps_per_unit_time(self, d: int) -> float:
        """τ = d^(1+ϑ): SGD steps per unit of t."""
        return float(d) ** (1.0 + self.time_exponent)

    def log10_steps(self, t: float, d: int) -> float:
        """log10 of ν = t τ, the SGD steps up to time t (in logs: no overflow for any d and ϑ)."""
        return math.log10(t) + (1.0 + self.time_exponent) * math.log10(d)

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
        """Warn (UserWarning) when −δ ≥ κ + ½: no ODE exists there (docs/theory.md §5)."""
        if self.region is Region.NO_ODE:
            warnings.warn(
                f"(kappa={self.kappa}, delta={self.delta}) lies in the no-ODE region "
                "(-delta >= kappa + 1/2): the noise step (gamma/p)^2/d of one SGD step does not vanish "
                "as d grows, so SGD does not concentrate and no ODE describes the run; time is "
                f"reported with theta={self.time_exponent:g}.",
                stacklevel=2,
            )
