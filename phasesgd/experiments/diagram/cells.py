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
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ...theory.scaling import Region, classify, natural_time_exponent
from .estimators import entry_spread, power_law
from .probes import Trace
from .setup import RunLength, Setup

NOT_MEASURED = "not_measured"


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the measured diagram (docs/phase_diagram.md says why each is what it is).

    ``run_length``: ε, the matched time and the end of a measurement (:class:`~.setup.RunLength`);
    ``window`` [½]: decades of ν at the end of a trace over which the late level L of the
    replica-mean risk is averaged; ``high`` [¼]: bad learning when L ≥ high·R(0);
    ``learned`` [3·10⁻²]: the risk was learnt when L ≤ learned·R(0); ``falling`` [½]: the
    risk still falls when L ≤ falling × the level of the window before (reported, not
    used to decide); ``d_exponent``
    [⅛]: L grows with d when faster than d^⅛; ``theta_margin`` [⅛]: ϑ_observed above it
    means a time scale that grows faster than d, the perfect-learning signature;
    ``min_concentration`` [0.1]: no ODE when the replica spread of Q_jj shrinks more slowly
    than d^(−0.1).
    """

    run_length: RunLength = RunLength()
    window: float = 0.5
    high: float = 0.25
    learned: float = 3e-2
    falling: float = 0.5
    d_exponent: float = 0.125
    theta_margin: float = 0.125
    min_concentration: float = 0.1


@dataclass(frozen=True)
class MeasuredCell:
    """One (κ, δ) of the measured diagram from one source: everything in it comes from its traces."""

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

    def row(self) -> dict[str, Any]:
        """The measured columns of ``phase_diagram.csv`` (numbers; lists joined by ';')."""
        join = lambda xs, f: ";".join(f.format(x) for x in xs)  # noqa: E731
        return {
            "kappa": float(self.kappa),
            "delta": float(self.delta),
            "source": self.source,
            "d_values": join(self.d_values, "{}"),
            "p_values": join(self.p_values, "{}"),
            "nu_star": join(self.nu_star, "{:.4g}"),
            "regime_observed": self.regime_observed,
            "theta_observed": f"{self.theta_observed:.4g}",
            "theta_observed_se": f"{self.theta_observed_se:.3g}",
            "concentration_exponent": f"{self.concentration_exponent:.4g}",
            "concentration_exponent_se": f"{self.concentration_exponent_se:.3g}",
            "risk_initial_mean": f"{self.risk_initial_mean:.6g}",
            "level": f"{self.level:.6g}",
            "level_d_slope": f"{self.level_d_slope:.3g}",
            "falling": int(self.falling),
            "risk_final_mean": f"{self.risk_final_mean:.6g}",
            "risk_final_se": f"{self.risk_final_se:.3g}",
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
    """What :func:`decide` reads of a cell: ϑ_observed (``theta``), the concentration exponent
    c, the late level L of its largest d, R(0), L's slope in d, whether a trace failed, and
    the traces' source ('sgd' or 'ode')."""

    theta: float
    concentration: float
    level: float
    initial: float
    level_d_slope: float
    failed: bool
    source: str


def decide(observed: Observables, criteria: Criteria) -> str:
    """``regime_observed`` from the measured observables alone, first rule that applies:

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
    level, initial = o.level, o.initial
    if o.failed or not math.isfinite(level):
        return Region.NO_ODE.value if o.source == "sgd" else NOT_MEASURED
    if o.source == "sgd" and not o.concentration >= c_.min_concentration:
        return Region.NO_ODE.value
    if level >= c_.high * initial or (level > c_.learned * initial and o.level_d_slope > c_.d_exponent):
        return Region.BAD.value
    if level <= c_.learned * initial and o.theta > c_.theta_margin:
        return Region.PERFECT.value
    return Region.PLATEAU.value


def analyse_cell(traces: Sequence[Trace], criteria: Criteria = Criteria()) -> MeasuredCell:
    """The :class:`MeasuredCell` of the traces of one (κ, δ) and source, one per d."""
    traces = sorted(traces, key=lambda tr: tr.d)
    first, big = traces[0], traces[-1]
    ds = np.array([tr.d for tr in traces], dtype=float)
    nu = np.array([tr.nu_star for tr in traces])
    slope, theta_se = power_law(ds, nu)
    spreads = [entry_spread(tr.diag_q) for tr in traces]
    c, c_se = power_law(ds, [s for s, _ in spreads], [e for _, e in spreads])
    levels = np.array([late_level(tr, criteria.window) for tr in traces])
    d_slope, _ = power_law(ds, levels)
    level, initial = levels[-1], float(_mean(big.risk[:, 0]))
    previous = late_level(big, criteria.window, back=1)
    falling = bool(level <= criteria.falling * previous)
    failed = any(tr.failed for tr in traces)
    unfinished = any(not tr.failed and not math.isfinite(tr.nu_star) for tr in traces)  # ν* beyond max_steps
    theta = slope - 1
    observed = Observables(theta, -c, level, initial, d_slope, failed, first.source)
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
    )


def theory_columns(kappa: Fraction, delta: Fraction) -> dict[str, Any]:
    """The theory beside a measured cell (docs/theory.md §5): the region, ϑ (NaN where no
    ODE exists) and the predicted concentration exponent of single entries, c = ½ (green,
    blue) or ½ + κ + δ (orange; its continuation, ≤ 0, beyond the no-ODE line)."""
    region = classify(kappa, delta)
    theta = math.nan if region is Region.NO_ODE else float(natural_time_exponent(kappa, delta))
    c = 0.5 if region in (Region.PERFECT, Region.PLATEAU) else 0.5 + float(kappa + delta)
    return {"regime_theory": region.value, "theta_theory": f"{theta:.4g}", "concentration_theory": f"{c:.4g}"}
