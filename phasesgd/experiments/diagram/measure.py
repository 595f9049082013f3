"""The measured phase diagram: measure (or read back) the traces of every (κ, δ, d), analyse
each cell, and write ``phase_diagram.csv`` (docs/theory.md §5, "Measuring the diagram").

:func:`measure_diagram` runs :func:`~phasesgd.experiments.diagram.probes.measure_point` for every point
that has no trace yet under ``<out>/traces`` (so an interrupted measurement resumes), and
:func:`read_diagram` analyses a folder of traces without measuring anything, keeping the
traces that match ``where`` filters. Neither calls the theory: :func:`write_diagram`
adds the theory's columns beside the measured ones when writing, and
:func:`asymptotic_rows` integrates the d → ∞ equations of each cell's region as the
comparison.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ...ode import ODEBudgetExceeded, SolverOptions, UnphysicalStateError, solve_ode
from ...sgd.engines import ENGINES
from ...theory.order_parameters import Overlaps, order_parameters
from ...theory.scaling import Region, student_width
from ..tables import same_value, write_csv
from .bootstrap import interval
from .cells import NOT_MEASURED, UNDECIDED, Criteria, MeasuredCell, analyse_cell, decide, redecide, theory_columns
from .probes import Trace, measure_point, probe_engine, trace_name
from .setup import SUMMARY_KEYS, Setup

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "kappa",
    "delta",
    "d_values",
    "regime_theory",
    "regime_observed",
    "theta_theory",
    "theta_observed",
    "theta_observed_se",
    "theta_observed_ci95_low",
    "theta_observed_ci95_high",
    "theta_note",
    "crossing_sign",
    "theta_tail",
    "theta_tail_ci95_low",
    "theta_tail_ci95_high",
    "theta_tail_d_min",
    "concentration_theory",
    "concentration_exponent",
    "concentration_exponent_se",
    "concentration_exponent_ci95_low",
    "concentration_exponent_ci95_high",
    "risk_final_mean",
    "risk_final_se",
    "risk_initial_mean",
    "level",
    "level_ratio",
    "level_ratio_ci95_low",
    "level_ratio_ci95_high",
    "level_d_slope",
    "level_d_slope_ci95_low",
    "level_d_slope_ci95_high",
    "falling",
    "p_values",
    "nu_star",
    "replicas",
    "sgd_steps",
    "source",
    "engine",
    "k",
    "p0",
    "gamma0",
    "noise",
    "risk_asymptotic",
)
WHERE_KEYS = ("kappa", "delta", "d", "p", "source", "engine", *SUMMARY_KEYS)
# The d → ∞ comparison: one solve per cell, bounded so that a stiff cell cannot hold up the table.
ASYMPTOTIC_SOLVER = SolverOptions(method="auto", max_seconds=120)


@dataclass(frozen=True)
class DiagramCell(MeasuredCell):
    """A :class:`~.cells.MeasuredCell` with the engine that measured each of its d
    (:attr:`Trace.engine`, in the order of ``d_values``): the CSV's ``engine`` column."""

    engines: tuple[str, ...] = ()


def analyse(traces: Sequence[Trace], criteria: Criteria = Criteria()) -> DiagramCell:
    """:func:`~.cells.analyse_cell` of the traces of one cell, with their engines."""
    cell = analyse_cell(traces, criteria)
    engines = tuple(trace.engine for trace in sorted(traces, key=lambda trace: trace.d))
    return DiagramCell(**{f.name: getattr(cell, f.name) for f in fields(MeasuredCell)}, engines=engines)


def parse_list(text: str, name: str) -> list[Fraction]:
    """'0,1/4,0.5' → exact values; 'a:b:s' → a, a+s, …, b (s > 0); mixed: '0,1/2:1:1/4'.
    A malformed list raises ValueError naming ``name``."""
    values: list[Fraction] = []
    try:
        for part in text.split(","):
            if ":" in part:
                a, b, s = (Fraction(x) for x in part.split(":"))
                if s <= 0 or b < a:
                    raise ValueError
                values += [a + i * s for i in range(int((b - a) / s) + 1)]
            else:
                values.append(Fraction(part))
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"{name}: expected numbers or ranges a:b:step (step > 0, b >= a), "
            f"e.g. -5/4,-3/4,0 or -1:1/2:1/8; got {text!r}"
        ) from None
    return sorted(set(values))


def parse_dimensions(text: str, name: str = "--d") -> list[int]:
    """A LIST of input dimensions: integers ≥ 2, at least two distinct ones (the
    exponents are fits over d). ValueError naming ``name`` otherwise."""
    values = parse_list(text, name)
    if len(values) < 2 or any(v.denominator != 1 or v < 2 for v in values):
        raise ValueError(f"{name}: expected at least two distinct integers >= 2, e.g. 16,36,81,169; got {text!r}")
    return [int(v) for v in values]


# The chain's time per step on a CPU: about 10⁻⁴ s of fixed cost, plus about 10⁻⁹ s per entry of
# its R (p + k)² work (measured here: ~10⁴ steps/s at R = 32, p = k = 1; ~300 steps/s at p = 300).
CHAIN_STEP_ENTRIES = 100_000  # R (p + k)² at which the work equals the fixed cost


def step_weight(replicas: int, p: int, k: int) -> float:
    """The chain's cost of one step in units of a step at small p: 1 + R (p + k)²/10⁵."""
    return 1.0 + replicas * (p + k) ** 2 / CHAIN_STEP_ENTRIES


@dataclass(frozen=True)
class Growth:
    """Growing d beyond a cell's grid: after the grid's d values, the next d is the last one
    times ``factor`` (rounded up), measured when the cell's predicted cost allows: ν*(d_next)
    is extrapolated from the last two measured ν* by their local power law, and the grown
    points' cost (ν_end = end_time·ν*, measured, and for the next one predicted, each weighted by
    :func:`step_weight` for its width) must sum to at most ``steps``; d stops at ``d_max``, or
    where a ν* is missing. The cost counts the overlap chain's steps, whose time does not
    depend on d, so growth needs the simulations on engine 'chain' or 'auto'. The decisions
    depend on the traces only, so an interrupted measurement resumes to the same d values."""

    factor: float = (169 / 16) ** (1 / 3)
    d_max: int = 10**6
    steps: int = 150_000

    def __post_init__(self) -> None:
        if not self.factor > 1 or self.d_max < 2 or self.steps < 1:
            raise ValueError(f"grow: expected factor > 1, d_max >= 2, steps >= 1; got {self}")

    def next_d(self, traces: Sequence[Trace], spent: float, end_time: float) -> tuple[int, float] | None:
        """The next d to measure and its predicted cost, or None when the growth stops."""
        last = sorted(traces, key=lambda tr: tr.d)[-2:]
        d_next = math.ceil(last[-1].d * self.factor)
        nu = [tr.nu_star for tr in last]
        if d_next > self.d_max or len(last) < 2 or not all(math.isfinite(x) and x > 0 for x in nu):
            return None
        slope = math.log(nu[1] / nu[0]) / math.log(last[1].d / last[0].d)
        setup = last[1].setup
        p = student_width(setup.p0, d_next, last[1].kappa)
        predicted = end_time * nu[1] * (d_next / last[1].d) ** slope * step_weight(setup.replicas, p, setup.k)
        return (d_next, predicted) if spent + predicted <= self.steps else None


def growth_cost(trace: Trace) -> float:
    """What a grown point took: its ν_end weighted by :func:`step_weight`."""
    return float(trace.steps[-1]) * step_weight(trace.setup.replicas, trace.p, trace.setup.k)


def _trace(kappa: Fraction, delta: Fraction, d: int, plan: tuple[Path, Setup, Criteria, str, str, str]) -> Trace:
    """The trace of one point: read from the folder when it is of the same setup, RunLength and
    engine, otherwise measured and saved (``plan``: folder, setup, criteria, source, engine, device)."""
    folder, setup, criteria, source, engine, device = plan
    wanted = probe_engine(engine, kappa, d, setup) if source == "sgd" else engine
    path = folder / trace_name(source, kappa, delta, d)
    trace = Trace.load(path) if path.exists() else None
    if trace is None or trace.setup != setup or trace.run_length != criteria.run_length or trace.engine != wanted:
        start = time.perf_counter()
        trace = measure_point(kappa, delta, d, setup, criteria.run_length, source, device, wanted)
        trace.save(path)
        seconds = time.perf_counter() - start
        log.info(
            "%s (%s) kappa=%s delta=%s d=%d: nu*=%.4g, %d steps in %.1f s",
            *(source, wanted, kappa, delta, d, trace.nu_star, trace.steps[-1], seconds),
        )
    return trace


def measure_diagram(
    kappas: Sequence[Fraction],
    deltas: Sequence[Fraction],
    ds: Sequence[int] | tuple[Sequence[int], Growth],
    out: str | os.PathLike,
    setup: Setup = Setup(),
    criteria: Criteria = Criteria(),
    source: str = "sgd",
    device: str = "cpu",
) -> list[DiagramCell]:
    """Measure every (κ, δ) at every d from ``source``: 'ode', or the simulations (source
    'sgd') on an engine, 'sgd' (SGD itself), 'chain' (the overlap chain) or 'auto' (resolved
    per (κ, d)), and analyse the cells. ``ds`` is the d values, or (d values, :class:`Growth`)
    to grow d further per cell as its budget allows. A trace already under ``<out>/traces``
    of the same setup, RunLength and engine is reused; one of another engine is measured again
    (one trace per point, so that the folder reads back as one cell per (source, κ, δ))."""
    engine, source = (source, "sgd") if source in ENGINES else ("ode", source)
    base, growth = (ds[0], ds[1]) if len(ds) == 2 and isinstance(ds[1], Growth) else (ds, None)
    if growth is not None and (source != "sgd" or engine == "sgd"):
        raise ValueError("grow: growing d needs the simulations on engine=chain or engine=auto")
    plan = (Path(out) / "traces", setup, criteria, source, engine, device)
    cells = []
    for kappa in kappas:
        for delta in deltas:
            traces = [_trace(kappa, delta, d, plan) for d in base]
            spent = 0.0
            while growth is not None and (step := growth.next_d(traces, spent, criteria.run_length.end_time)):
                traces.append(_trace(kappa, delta, step[0], plan))
                spent += growth_cost(traces[-1])  # what it took, not what was predicted
            cells.append(analyse(traces, criteria))
    return cells


def read_diagram(
    path: str | os.PathLike, where: dict[str, str] | None = None, criteria: Criteria = Criteria()
) -> list[DiagramCell]:
    """The cells of the traces under ``<path>/traces`` that match every ``where`` key (one
    of :data:`WHERE_KEYS`; numbers compared exactly, '1/4' = '0.25'), one cell per (source, κ, δ).
    A trace written before engines were recorded reads as engine 'sgd' (the only one then)."""
    where = where or {}
    unknown = sorted(set(where) - set(WHERE_KEYS))
    if unknown:
        raise ValueError(f"--where: unknown key {unknown[0]!r}; keys: {', '.join(WHERE_KEYS)}")
    groups: dict[tuple[str, Fraction, Fraction], list[Trace]] = defaultdict(list)
    for file in sorted((Path(path) / "traces").glob("*.npz")):
        trace = Trace.load(file)
        point = {"kappa": float(trace.kappa), "delta": float(trace.delta), "d": trace.d, "p": trace.p}
        values = point | {"source": trace.source, "engine": trace.engine} | trace.setup.summary()
        if all(same_value(values[key], value) for key, value in where.items()):
            groups[trace.source, trace.kappa, trace.delta].append(trace)
    return [analyse(traces, criteria) for _, traces in sorted(groups.items())]


def diagram_rows(cells: Sequence[MeasuredCell]) -> list[dict[str, Any]]:
    """The CSV rows: the measured columns, the engine of each d (';'-joined like ``d_values``;
    'sgd' for a cell without engines, measured before there were two), the theory's columns
    beside them, and each cell's setup."""
    setup = lambda s: {"k": s.k, "p0": s.p0, "gamma0": s.gamma0, "noise": s.noise}  # noqa: E731
    theory = lambda c: theory_columns(c.kappa, c.delta)  # noqa: E731
    engine = lambda c: {"engine": ";".join(getattr(c, "engines", ()) or ["sgd"] * len(c.d_values))}  # noqa: E731
    return [cell.row() | engine(cell) | theory(cell) | setup(cell.setup) | {"risk_asymptotic": "nan"} for cell in cells]


def write_diagram(
    cells: Sequence[MeasuredCell], path: str | os.PathLike, asymptotic: bool = False
) -> list[dict[str, Any]]:
    """``phase_diagram.csv``: one row per cell, columns :data:`CSV_COLUMNS` (with
    ``asymptotic``, the column ``risk_asymptotic`` of :func:`asymptotic_rows`); returns the rows."""
    rows = diagram_rows(cells)
    if asymptotic:
        for row, extra in zip(rows, asymptotic_rows(cells)):
            row["risk_asymptotic"] = extra["risk_asymptotic"]
    write_csv(rows, path, CSV_COLUMNS)
    return rows


BOUNDARY_COLUMNS = (
    "kappa",
    "boundary",
    "boundary_ci95_low",
    "boundary_ci95_high",
    "boundary_predicted",
    "theory_kappa_plus_half",
    "published_half_kappa_plus_one",
    "threshold_c",
    "cells",
)


def predicted_concentration(cell: MeasuredCell) -> float:
    """THE HOOK for the predicted boundary: the concentration exponent c that the theory predicts
    for ``cell`` (its setup at its κ, δ and d values), fitted over ``cell.d_values`` as the
    measurement fits it. NaN for now: the fluctuation theory's ``concentration_predicted``
    (issue 17, another module's) is not written yet; once it is, call it here and
    ``boundary_predicted`` of :func:`boundary_rows` is its crossing of the same threshold."""
    return math.nan


def boundary_rows(
    cells: Sequence[MeasuredCell],
    threshold: float = Criteria().min_concentration,
    predicted: Callable[[MeasuredCell], float] = predicted_concentration,
) -> list[dict[str, Any]]:
    """Where concentration is lost, per κ: the −δ at which the measured concentration exponent
    c(δ) falls through ``threshold`` (0: the spread of single entries stops shrinking), by
    linear interpolation between the last cell (in −δ) that concentrates and the first that
    does not; NaN where c does not cross inside the scanned δ. The 95 % interval is that of the
    crossing over the cells' replica-bootstrap resamples of c (resample b of every cell, the
    cells being independent runs); a resample whose c never falls through the threshold
    inside the scan counts as +∞, one that is below it throughout as −∞, so an interval
    reaching past the scan reads ±inf. Beside it: ``boundary_predicted``, the same crossing
    of ``predicted`` c (:func:`predicted_concentration`, NaN until the theory provides it),
    and both candidate lines: −δ = κ + ½ (docs/theory.md §5) and −δ = (κ+1)/2 (published code)."""
    rows = []
    for kappa in sorted({c.kappa for c in cells}):
        column = sorted((c for c in cells if c.kappa == kappa and c.source == "sgd"), key=lambda c: -c.delta)
        x = np.array([-float(c.delta) for c in column])  # −δ increasing
        c = np.array([c.concentration_exponent for c in column])
        samples = [cell.bootstrap.concentration if cell.bootstrap is not None else None for cell in column]
        low = high = math.nan
        if column and all(s is not None for s in samples):
            resampled = np.stack(samples, 1)  # (B, cells)
            low, high = interval(np.array([_crossing_or_beyond(x, row, threshold) for row in resampled]))
        rows.append(
            {
                "kappa": float(kappa),
                "boundary": f"{_crossing(x, c, threshold):.4g}",
                "boundary_ci95_low": f"{low:.4g}",
                "boundary_ci95_high": f"{high:.4g}",
                "boundary_predicted": f"{_crossing(x, np.array([predicted(cell) for cell in column]), threshold):.4g}",
                "theory_kappa_plus_half": float(kappa) + 0.5,
                "published_half_kappa_plus_one": (float(kappa) + 1) / 2,
                "threshold_c": threshold,
                "cells": len(column),
            }
        )
    return rows


def _crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """First x where y, decreasing through ``level``, crosses it (linear interpolation)."""
    for i in range(1, x.size):
        if y[i - 1] >= level > y[i]:
            return float(x[i - 1] + (y[i - 1] - level) / (y[i - 1] - y[i]) * (x[i] - x[i - 1]))
    return float("nan")


def _crossing_or_beyond(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """:func:`_crossing`, or +∞ where y never falls below ``level`` in the scan, −∞ where it
    starts below it and never crosses downwards; NaN where y is not finite."""
    if not np.isfinite(y).all():
        return math.nan
    found = _crossing(x, y, level)
    if math.isfinite(found):
        return found
    return math.inf if (y >= level).all() else -math.inf


# The thresholds of Criteria that decide a cell, and for one whose value is 0 (half of it is no
# move) the shift used instead: ¼, half the spread exponent ½ of a random initial condition.
THRESHOLDS = ("min_concentration", "high", "learned", "d_exponent", "theta_margin")
ZERO_SHIFT = 0.25
REGIME_COUNTS = ("perfect", "plateau", "bad", "no_ode", UNDECIDED, NOT_MEASURED)


def threshold_sensitivity(cells: Sequence[MeasuredCell], criteria: Criteria = Criteria()) -> list[dict[str, Any]]:
    """How the calls change when each threshold moves by ± half its value (± :data:`ZERO_SHIFT`
    for a threshold at 0), the others fixed: one row per move, with the count of each call and
    the cells whose call changed ('κ,δ: before→after'). The first row is the calls as made;
    the last, 'point_estimates', decides on the point estimates alone (intervals of zero
    width), which shows how many calls the intervals leave undecided."""
    base = [cell.regime_observed for cell in cells]

    def row(name: str, value: float, moved: float, calls: Sequence[str]) -> dict[str, Any]:
        changed = [
            f"{_label(cell.kappa)},{_label(cell.delta)}: {a}→{b}" for cell, a, b in zip(cells, base, calls) if a != b
        ]
        counts = {regime: sum(call == regime for call in calls) for regime in REGIME_COUNTS}
        return {"threshold": name, "value": value, "moved_to": moved, **counts, "changed": len(changed)} | {
            "cells_changed": "; ".join(changed)
        }

    rows = [row("none", math.nan, math.nan, base)]
    for name in THRESHOLDS:
        value = float(getattr(criteria, name))
        step = abs(value) / 2 if value else ZERO_SHIFT
        for moved in (value - step, value + step):
            calls = [redecide(cell, replace(criteria, **{name: moved})) for cell in cells]
            rows.append(row(name, value, moved, calls))
    points = [_decide_on_points(cell, criteria) for cell in cells]
    rows.append(row("point_estimates", math.nan, math.nan, points))
    return rows


def _decide_on_points(cell: MeasuredCell, criteria: Criteria) -> str:
    """The call with every interval shrunk to its point estimate."""
    o = cell.observables
    if cell.regime_observed == NOT_MEASURED or o is None:
        return cell.regime_observed
    point = lambda x: (x, x)  # noqa: E731
    shrunk = replace(
        o,
        theta_ci=point(o.theta),
        concentration_ci=point(o.concentration),
        level_ratio_ci=point(o.level_ratio),
        level_d_slope_ci=point(o.level_d_slope),
    )
    return decide(shrunk, criteria)


def _label(x: Fraction) -> str:
    return str(Fraction(x))


def asymptotic_rows(cells: Sequence[MeasuredCell]) -> list[dict[str, Any]]:
    """The comparison with the d → ∞ equations (docs/theory.md §5): for each cell with an
    ODE, the region's asymptotic equations from the initial overlaps of the largest d,
    integrated over the same number of SGD steps ν_end as the measurement (t = ν_end /
    d^(1+ϑ) on the region's clock); ``risk_asymptotic`` is their risk at the end, beside
    the measured ``risk_final_mean``. This reads the theory by design; the measurement
    does not."""
    rows = []
    for cell in cells:
        d = cell.d_values[-1]
        physics = cell.setup.physics(cell.kappa, cell.delta, d)
        risk = math.nan
        if physics.scaling.region is not Region.NO_ODE and cell.sgd_steps_last > 0:
            teacher, student = cell.setup.networks(cell.kappa, d)
            start = order_parameters(student.weight, teacher.weight)
            overlaps = Overlaps(start.Q, start.M, start.P, student.second_layer)
            t_end = cell.sgd_steps_last / physics.scaling.steps_per_unit_time(d)
            try:
                sol = solve_ode(overlaps, physics, [0.0, t_end], mode="asymptotic", solver=ASYMPTOTIC_SOLVER)
                risk = float(np.mean(sol.risk[..., -1]))
            except (ValueError, ODEBudgetExceeded, UnphysicalStateError) as err:
                log.info("asymptotic ODE at kappa=%s delta=%s failed: %s", cell.kappa, cell.delta, err)
        rows.append({"kappa": float(cell.kappa), "delta": float(cell.delta), "risk_asymptotic": f"{risk:.6g}"})
    return rows
