"""Analysis of measurements: the measured phase diagram's cells with the thresholds that
decide them (:class:`Criteria`).

:func:`analyse_cell` turns the :class:`~phasesgd.experiments.diagram.probes.Trace` of one
(κ, δ) and source at several d into a :class:`MeasuredCell`: ϑ_observed from ν*(d), the
concentration exponent c from the replica spread of Q_jj at the matched time, the outcome
from the late risk, and ``regime_observed`` from these alone (:func:`decide`). The theory's
columns are added separately by :func:`theory_columns`, after the measurement.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from ...theory.scaling import Region, classify, natural_time_exponent
from .bootstrap import RESAMPLES, CellBootstrap, Point, bootstrap_cell, cell_rng, crossing_steps, interval
from .estimators import entry_spread, power_law
from .probes import Trace
from .setup import RunLength, Setup

NOT_MEASURED = "not_measured"
UNDECIDED = "undecided"
SIGN_CHANGE = "sign_change"  # theta_note: the crossings of the d values do not all have one sign
NO_CROSSING = "no_crossing"  # theta_note: a d whose risk never moved by ε
NAN2 = (math.nan, math.nan)


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the measured diagram (docs/phase_diagram.md says why each is what it is).

    ``run_length``: ε, the matched time and the end of a measurement (:class:`~.setup.RunLength`);
    ``window`` [½]: decades of ν at the end of a trace over which the late level L of the
    replica-mean risk is averaged; ``high`` [¼]: bad learning when L ≥ high·R(0);
    ``learned`` [3·10⁻²]: the risk was learnt when L ≤ learned·R(0); ``falling`` [½]: the
    risk still falls when L ≤ falling × the level of the window before (reported, not
    used to decide); ``d_exponent`` [⅛]: L grows with d when faster than d^⅛;
    ``theta_margin`` [⅛]: ϑ_observed above it means a time scale that grows faster than d,
    the perfect-learning signature; ``min_concentration`` [0]: no ODE when the replica
    spread of Q_jj does not shrink with d (c below it). Each threshold is applied to a 95 %
    interval (:mod:`.bootstrap`, ``resamples`` per cell): a cell is called only when the
    interval lies on one side (:func:`decide`).
    """

    run_length: RunLength = RunLength()
    window: float = 0.5
    high: float = 0.25
    learned: float = 3e-2
    falling: float = 0.5
    d_exponent: float = 0.125
    theta_margin: float = 0.125
    min_concentration: float = 0.0
    resamples: int = RESAMPLES


def _f(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


@dataclass(frozen=True)
class MeasuredCell:
    """One (κ, δ) of the measured diagram from one source: everything in it comes from its
    traces. The ``*_ci95`` pairs are 95 % intervals from the replica bootstrap; ``crossing_sign``
    is the sign of R(ν*) − R(0) per d (+1 the risk rose to ε, −1 it fell); ``theta_note`` says
    why ϑ_observed is NaN ('sign_change', 'no_crossing') or is empty. ``observables`` (what
    :func:`decide` read) and ``bootstrap`` (the resampled values) are kept for re-deciding
    and for the boundary's interval; they are not columns."""

    kappa: Fraction
    delta: Fraction
    source: str
    d_values: tuple[int, ...]
    p_values: tuple[int, ...]
    nu_star: tuple[float, ...]
    theta_observed: float
    theta_observed_se: float
    concentration_exponent: float
    concentration_exponent_se: float
    risk_initial_mean: float
    level: float
    level_d_slope: float
    falling: bool
    risk_final_mean: float
    risk_final_se: float
    replicas: int
    sgd_steps: int
    sgd_steps_last: int  # ν_end at the largest d
    regime_observed: str
    setup: Setup
    theta_observed_ci95: tuple[float, float] = NAN2
    concentration_exponent_ci95: tuple[float, float] = NAN2
    level_ratio_ci95: tuple[float, float] = NAN2
    level_d_slope_ci95: tuple[float, float] = NAN2
    crossing_sign: tuple[int, ...] = ()
    theta_note: str = ""
    theta_tail: float = math.nan
    theta_tail_ci95: tuple[float, float] = NAN2
    theta_tail_d_min: int = 0
    observables: Observables | None = field(default=None, compare=False, repr=False)
    bootstrap: CellBootstrap | None = field(default=None, compare=False, repr=False)

    def row(self) -> dict[str, Any]:
        """The measured columns of ``phase_diagram.csv`` (numbers; lists joined by ';')."""
        join = lambda xs, f: ";".join(f.format(x) for x in xs)  # noqa: E731
        ci = lambda name, pair: {f"{name}_ci95_low": _f(pair[0]), f"{name}_ci95_high": _f(pair[1])}  # noqa: E731
        return {
            "kappa": float(self.kappa),
            "delta": float(self.delta),
            "source": self.source,
            "d_values": join(self.d_values, "{}"),
            "p_values": join(self.p_values, "{}"),
            "nu_star": join(self.nu_star, "{:.4g}"),
            "regime_observed": self.regime_observed,
            "theta_observed": _f(self.theta_observed),
            "theta_observed_se": _f(self.theta_observed_se, 3),
            **ci("theta_observed", self.theta_observed_ci95),
            "theta_note": self.theta_note,
            "crossing_sign": join(self.crossing_sign, "{:+d}"),
            "theta_tail": _f(self.theta_tail),
            **ci("theta_tail", self.theta_tail_ci95),
            "theta_tail_d_min": self.theta_tail_d_min,
            "concentration_exponent": _f(self.concentration_exponent),
            "concentration_exponent_se": _f(self.concentration_exponent_se, 3),
            **ci("concentration_exponent", self.concentration_exponent_ci95),
            "risk_initial_mean": _f(self.risk_initial_mean, 6),
            "level": _f(self.level, 6),
            "level_ratio": _f(self.level / self.risk_initial_mean if self.risk_initial_mean else math.nan),
            **ci("level_ratio", self.level_ratio_ci95),
            "level_d_slope": _f(self.level_d_slope, 3),
            **ci("level_d_slope", self.level_d_slope_ci95),
            "falling": int(self.falling),
            "risk_final_mean": _f(self.risk_final_mean, 6),
            "risk_final_se": _f(self.risk_final_se, 3),
            "replicas": self.replicas,
            "sgd_steps": self.sgd_steps,
        }


def _mean(x: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis)


def late_level(trace: Trace, decades: float, back: int = 0) -> float:
    """Mean of the replica-mean risk over the ``back``-th window of ``decades`` decades of ν
    counted back from the end of the trace (back = 0: the last window)."""
    end = float(trace.steps[-1])
    hi, lo = end * 10 ** (-back * decades), end * 10 ** (-(back + 1) * decades)
    inside = (trace.steps > 0) & (trace.steps >= lo * (1 - 1e-9)) & (trace.steps <= hi * (1 + 1e-9))
    values = _mean(trace.risk[:, inside])
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def final_risk(trace: Trace) -> tuple[float, float]:
    """Mean and standard error over replicas of each replica's last finite risk."""
    last = np.array([row[np.isfinite(row)][-1] for row in trace.risk if np.isfinite(row).any()])
    if last.size == 0:
        return math.nan, math.nan
    return float(last.mean()), (float(last.std(ddof=1) / math.sqrt(last.size)) if last.size > 1 else math.nan)


@dataclass(frozen=True)
class Observables:
    """What :func:`decide` reads of a cell, each a point estimate and a 95 % interval
    (``*_ci``, low and high): ϑ_observed (``theta``), the concentration exponent c, the late
    level over R(0) at the largest d (``level_ratio``) and its slope in d; whether a trace
    failed, and the traces' source ('sgd' or 'ode'). Without intervals (NaN) a threshold
    is never clearly passed."""

    theta: float
    concentration: float
    level_ratio: float
    level_d_slope: float
    failed: bool
    source: str
    theta_ci: tuple[float, float] = NAN2
    concentration_ci: tuple[float, float] = NAN2
    level_ratio_ci: tuple[float, float] = NAN2
    level_d_slope_ci: tuple[float, float] = NAN2


def above(ci: tuple[float, float], threshold: float) -> bool | None:
    """Is the quantity above ``threshold``? True when the whole interval ``ci`` is, False when
    it is wholly at or below it, None (undecided) when it straddles it or is NaN."""
    low, high = ci
    if low > threshold:
        return True
    if high <= threshold:
        return False
    return None


def _and(*xs: bool | None) -> bool | None:
    """Three-valued (Kleene) and: False if any is False, True if all are True, else None."""
    return False if any(x is False for x in xs) else (True if all(x is True for x in xs) else None)


def _or(*xs: bool | None) -> bool | None:
    """Three-valued (Kleene) or: True if any is True, False if all are False, else None."""
    return True if any(x is True for x in xs) else (False if all(x is False for x in xs) else None)


def _not(x: bool | None) -> bool | None:
    return None if x is None else not x


def decide(observed: Observables, criteria: Criteria) -> str:
    """``regime_observed`` from the measured observables alone, first rule that applies, each
    threshold compared with a 95 % interval (:func:`above`): a rule whose condition the
    intervals leave open makes the cell ``undecided`` (it could be this rule's region or a
    later one's):

    1. no_ode — (simulations only) a trace failed, or c < ``min_concentration``: the replica
       spread of single entries does not shrink with d (the ODE cannot see this: there a
       failed solve is 'not_measured');
    2. bad — L ≥ ``high``·R(0), or the risk was not learnt (L > ``learned``·R(0)) and L
       grows with d faster than d^``d_exponent``;
    3. perfect — L ≤ ``learned``·R(0) and ϑ_observed > ``theta_margin``: the risk was
       learnt, on a time scale that grows faster than d;
    4. plateau — otherwise (learnt, or settled below ``high``·R(0), on the time scale d).
    """
    o, c_ = observed, criteria
    if o.failed or not math.isfinite(o.level_ratio):
        return Region.NO_ODE.value if o.source == "sgd" else NOT_MEASURED
    if o.source == "sgd":
        concentrates = above(o.concentration_ci, c_.min_concentration)
        if concentrates is not True:
            return Region.NO_ODE.value if concentrates is False else UNDECIDED
    ratio = o.level_ratio_ci
    learnt = _not(above(ratio, c_.learned))
    bad = _or(above(ratio, c_.high), _and(_not(learnt), above(o.level_d_slope_ci, c_.d_exponent)))
    if bad is not False:
        return Region.BAD.value if bad else UNDECIDED
    perfect = _and(learnt, above(o.theta_ci, c_.theta_margin))
    if perfect is not False:
        return Region.PERFECT.value if perfect else UNDECIDED
    return Region.PLATEAU.value


def redecide(cell: MeasuredCell, criteria: Criteria) -> str:
    """The cell's call under other thresholds (its observables are kept; ε and the run length
    are part of the measurement and cannot change here)."""
    if cell.regime_observed == NOT_MEASURED or cell.observables is None:
        return cell.regime_observed
    return decide(cell.observables, criteria)


def _points(traces: Sequence[Trace]) -> list[Point]:
    return [Point(tr.d, tr.steps, tr.risk, tr.diag_q, tr.failed) for tr in traces]


TAIL_POINTS = 3  # the fewest d values of one mechanism that theta_tail is fitted over


def _tail_fit(
    ds: np.ndarray, nu: np.ndarray, signs: Sequence[int], boot: CellBootstrap
) -> tuple[float, tuple[float, float], int]:
    """ϑ of the mechanism at the largest d: fitted over the largest d values whose crossings
    share the sign of the largest d's (all d when none changes), with its bootstrap interval and
    the smallest d used; NaN (and d 0) with fewer than :data:`TAIL_POINTS` such d values."""
    n = len(signs)
    start = n
    while start > 0 and signs[start - 1] == signs[-1] != 0:
        start -= 1
    columns = list(range(start, n))
    if len(columns) < TAIL_POINTS or not np.isfinite(nu[columns]).all():
        return math.nan, NAN2, 0
    slope, _ = power_law(ds[columns], nu[columns])
    return slope - 1, interval(boot.theta_over(ds, columns)), int(ds[start])


def analyse_cell(traces: Sequence[Trace], criteria: Criteria = Criteria()) -> MeasuredCell:
    """The :class:`MeasuredCell` of the traces of one (κ, δ) and source, one per d, with
    the replica bootstrap's 95 % intervals (seeded from the cell, :func:`~.bootstrap.cell_rng`).
    ϑ is not fitted (NaN, ``theta_note`` 'sign_change') when the risk crosses ε upwards at
    some d and downwards at others: ν* then times two mechanisms; resamples whose crossings
    change sign are likewise refused (NaN, which widens the interval)."""
    traces = sorted(traces, key=lambda tr: tr.d)
    first, big = traces[0], traces[-1]
    ds = np.array([tr.d for tr in traces], dtype=float)
    nu = np.array([tr.nu_star for tr in traces])
    slope, theta_se = power_law(ds, nu)
    epsilon = criteria.run_length.epsilon
    signs = tuple(int(crossing_steps(tr.steps, _mean(tr.risk)[None], epsilon)[1][0]) for tr in traces)
    spreads = [entry_spread(tr.diag_q) for tr in traces]
    c, c_se = power_law(ds, [s for s, _ in spreads], [e for _, e in spreads])
    levels = np.array([late_level(tr, criteria.window) for tr in traces])
    d_slope, _ = power_law(ds, levels)
    level, initial = levels[-1], float(_mean(big.risk[:, 0]))
    previous = late_level(big, criteria.window, back=1)
    falling = bool(level <= criteria.falling * previous)
    failed = any(tr.failed for tr in traces)
    unfinished = any(not tr.failed and not math.isfinite(tr.nu_star) for tr in traces)  # ν* beyond max_steps
    rng = cell_rng(first.setup.seed, first.kappa, first.delta, first.source)
    boot = bootstrap_cell(_points(traces), criteria.run_length.epsilon, criteria.window, rng, criteria.resamples)
    theta, note = slope - 1, ""
    if unfinished or not np.isfinite(nu).all():
        note = NO_CROSSING
    elif len({s for s in signs if s}) > 1:
        theta, theta_se, note = math.nan, math.nan, SIGN_CHANGE
    theta_ci = interval(boot.theta) if math.isfinite(theta) else NAN2
    tail, tail_ci, tail_d = _tail_fit(ds, nu, signs, boot)
    observed = Observables(
        theta,
        -c,
        level / initial if initial else math.nan,
        d_slope,
        failed,
        first.source,
        theta_ci,
        interval(boot.concentration),
        interval(boot.level_ratio),
        interval(boot.level_d_slope),
    )
    regime = NOT_MEASURED if unfinished else decide(observed, criteria)
    mean, se = final_risk(big)
    return MeasuredCell(
        kappa=first.kappa,
        delta=first.delta,
        source=first.source,
        d_values=tuple(tr.d for tr in traces),
        p_values=tuple(tr.p for tr in traces),
        nu_star=tuple(float(x) for x in nu),
        theta_observed=theta,
        theta_observed_se=theta_se,
        concentration_exponent=-c,
        concentration_exponent_se=c_se,
        risk_initial_mean=initial,
        level=level,
        level_d_slope=d_slope,
        falling=falling,
        risk_final_mean=mean,
        risk_final_se=se,
        replicas=first.setup.replicas,
        sgd_steps=int(sum(tr.steps[-1] for tr in traces)),
        sgd_steps_last=int(big.steps[-1]),
        regime_observed=regime,
        setup=first.setup,
        theta_observed_ci95=observed.theta_ci,
        concentration_exponent_ci95=observed.concentration_ci,
        level_ratio_ci95=observed.level_ratio_ci,
        level_d_slope_ci95=observed.level_d_slope_ci,
        crossing_sign=signs,
        theta_note=note,
        theta_tail=tail,
        theta_tail_ci95=tail_ci,
        theta_tail_d_min=tail_d,
        observables=observed,
        bootstrap=boot,
    )


def theory_columns(kappa: Fraction, delta: Fraction) -> dict[str, Any]:
    """The theory beside a measured cell (docs/theory.md §5): the region, ϑ (NaN where no
    ODE exists) and the predicted concentration exponent of single entries, c = ½ (green,
    blue) or ½ + κ + δ (orange; its continuation, ≤ 0, beyond the no-ODE line)."""
    region = classify(kappa, delta)
    theta = math.nan if region is Region.NO_ODE else float(natural_time_exponent(kappa, delta))
    c = 0.5 if region in (Region.PERFECT, Region.PLATEAU) else 0.5 + float(kappa + delta)
    return {"regime_theory": region.value, "theta_theory": f"{theta:.4g}", "concentration_theory": f"{c:.4g}"}
