"""The (δ, κ) phase diagram of THEORY.md §5, measured from sweeps or from the asymptotic ODEs.

Sweeps
    :func:`sweep_jobs` expands an experiment's ``hydra.sweeper.params`` and any swept
    overrides exactly as Hydra's basic sweeper does; :func:`run_sweep` runs the jobs in
    this process, each into ``<sweep_dir>/<override_dirname>`` — the folder that
    ``scripts/train.py -m ... hydra.sweep.dir=<sweep_dir>`` gives the same job, so the two
    resume each other — skipping finished runs. :func:`load_sweep` reads every run's
    ``summary.json`` row back without re-running anything.

Measured outcome of a cell (κ, δ)
    :func:`observe`, with the thresholds of :class:`Criteria`; see its docstring.

The diagram
    :func:`sweep_cells` (simulations) and :func:`ode_cells` (asymptotic ODEs) give one
    :class:`Cell` per (κ, δ); :func:`write_cells` writes them as ``phase_diagram.csv`` and
    :func:`draw_diagram` draws them over the theory, with the boundaries κ = −δ (the
    plateau line) and −δ = (κ+1)/2 (onset of the no-ODE region).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap

from .physics import student_width
from .plotting import plt, save_figure
from .regimes import Number, Region, classify, exact

log = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parents[1] / "conf"
COLOURS = {Region.PERFECT: "tab:green", Region.PLATEAU: "tab:blue", Region.BAD: "tab:orange", Region.NO_ODE: "tab:red"}
# Overrides that only change how a run is shown, used when a sweep runs in this process.
QUIET = ("trainer.enable_progress_bar=false", "callbacks.progress=null")


# ----- sweeps -------------------------------------------------------------------------------


def sweep_jobs(overrides: Sequence[str] = ()) -> list[list[str]]:
    """The jobs of ``scripts/train.py -m <overrides>``: the composed config's
    ``hydra.sweeper.params`` (e.g. from ``experiment=<name>``) followed by ``overrides``
    (a key given in both takes the command line's value), expanded as a Cartesian
    product by Hydra's own basic-sweeper code. Each job is its list of overrides."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    task = [o.input_line for o in parsed if not o.key_or_group.startswith("hydra")]  # as Hydra splits them
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides([*params, *task]), None)
    return batch


def job_dir(sweep_dir: str | os.PathLike, job: Sequence[str]) -> Path:
    """``<sweep_dir>/<override_dirname>``: Hydra's default ``hydra.job.override_dirname``
    (the job's overrides sorted and joined by ','), as in conf/config.yaml's sweep subdir."""
    return Path(sweep_dir) / ",".join(sorted(job))


def run_sweep(jobs: Iterable[Sequence[str]], sweep_dir: str | os.PathLike, extra: Sequence[str] = QUIET) -> list[Path]:
    """Run every job in this process (one after the other) into :func:`job_dir`; a
    finished run there is skipped (``skip_finished``), a diverged one is logged and kept.
    ``extra`` are presentation overrides, which do not change a run's identity."""
    from hydra import compose, initialize_config_dir

    from .module import DivergenceError
    from .run import train

    dirs = []
    for job in jobs:
        out = job_dir(sweep_dir, job)
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*job, *extra, f"output_dir='{out}'"])
        start = time.perf_counter()
        try:
            module = train(cfg)
            note = "skipped (finished before)" if module is None else "done"
        except DivergenceError as err:
            note = f"diverged: {err}"
        log.info("%s: %s in %.1f s", out.name, note, time.perf_counter() - start)
        dirs.append(out)
    return dirs


def read_row(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``summary.json`` row plus ``path``, its folder (which holds ``results.npz``)."""
    return json.loads((Path(run_dir) / "summary.json").read_text()) | {"path": str(run_dir)}


def load_sweep(path: str | os.PathLike, **where: Any) -> list[dict[str, Any]]:
    """Every run under ``path`` as its :func:`read_row` (see :mod:`phasesgd.summary` for the
    columns), sorted by folder, without re-running anything. Keyword arguments keep the
    rows whose key equals the value (numbers compared as exact decimals), e.g.
    ``load_sweep(dir, noise=1e-3, status="finished")``."""
    rows = [read_row(summary.parent) for summary in sorted(Path(path).rglob("summary.json"))]
    return [row for row in rows if all(_same(row.get(key), value) for key, value in where.items())]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float, str, Fraction)) and not isinstance(a, bool):
        return exact(a) == exact(b)
    return a == b


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike, columns: Sequence[str] | None = None) -> None:
    """Rows (dicts) as a CSV file with ``columns`` (default: the first row's keys), atomically."""
    from .io import atomic_path

    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ----- curves -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """All replicas at one width d of one cell, pooled over seeds and replica offsets.

    ``risk`` (R, T) on the times ``t`` (T,); a replica whose run stopped early is NaN
    after its last measurement. ``q`` (R,) is each replica's final squared norm
    q = tr Q / p. ``diverged``: one of the runs ended with an error (e.g. divergence).
    """

    d: int
    t: np.ndarray
    risk: np.ndarray
    q: np.ndarray
    diverged: bool = False

    @staticmethod
    def pool(d: int, runs: Sequence[dict[str, np.ndarray]], diverged: bool = False) -> Curve:
        """One curve from several ``results.npz`` of the same physics (different seeds)."""
        longest = max(runs, key=lambda r: r["t"].size)["t"]
        risk = np.concatenate([np.pad(r["risk"].astype(float), ((0, 0), (0, longest.size - r["t"].size)), constant_values=np.nan) for r in runs])
        q = np.concatenate([np.trace(r["Q"], axis1=-2, axis2=-1) / r["Q"].shape[-1] for r in runs])
        return Curve(d, longest, risk, q, diverged)

    @property
    def mean(self) -> np.ndarray:
        """Replica-mean risk R̄(t)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.risk, 0)

    @property
    def initial(self) -> float:
        return float(self.mean[0])

    def final(self) -> tuple[float, float]:
        """Mean and standard error over replicas of the last finite risk of each."""
        last = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan for row in self.risk])
        last = last[np.isfinite(last)]
        se = float(last.std(ddof=1) / math.sqrt(last.size)) if last.size > 1 else 0.0
        return (float(last.mean()) if last.size else math.nan), se

    def level(self, decades: float, back: int = 0) -> float:
        """Mean of R̄(t) over the ``back``-th window of ``decades`` decades counted back from
        the end: back=0 is [t_end·10^(−decades), t_end], back=1 the window before it."""
        t_end = self.t[-1]
        hi, lo = t_end * 10 ** (-back * decades), t_end * 10 ** (-(back + 1) * decades)
        inside = (self.t > 0) & (self.t >= lo * (1 - 1e-9)) & (self.t <= hi * (1 + 1e-9))
        values = self.mean[inside]
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else math.nan

    @property
    def spread(self) -> float:
        """Relative replica spread std/mean of the final squared norm q = tr Q/p."""
        q = self.q[np.isfinite(self.q)]
        return float(q.std(ddof=1) / abs(q.mean())) if q.size > 1 and q.mean() != 0 else math.nan


# ----- the measured outcome -------------------------------------------------------------------


@dataclass(frozen=True)
class Criteria:
    """Thresholds of :func:`observe` (defaults in brackets).

    - ``window`` [1/2]: decades of time, at the end of the run, over which the level L of
      the replica-mean risk is averaged;
    - ``near_start`` [1/2]: bad learning when L ≥ near_start × R(0);
    - ``d_exponent`` [1/8]: L grows (falls) with d when it does so faster than d^(±1/8);
    - ``falling`` [1/2]: the risk keeps falling when L ≤ falling × the level of the
      window before;
    - ``learned`` [10⁻²]: perfect learning needs L ≤ learned × R(0);
    - ``negligible`` [10⁻⁶]: L ≤ negligible × R(0) counts as zero (still falling);
    - ``spread_exponent`` [1/4]: no ODE when the replica spread shrinks more slowly than
      d^(−1/4) (concentration makes it d^(−1/2)).
    """

    window: float = 0.5
    near_start: float = 0.5
    d_exponent: float = 0.125
    falling: float = 0.5
    learned: float = 1e-2
    negligible: float = 1e-6
    spread_exponent: float = 0.25


@dataclass(frozen=True)
class Outcome:
    """The measured region and the evidence for it (at the largest d)."""

    region: Region
    level: float  # L: mean risk over the last ``window`` decades
    initial: float  # R(0)
    d_slope: float = math.nan  # d log L / d log d, least squares over the d values
    spread_ratio: float = math.nan  # replica spread of q at the largest d / at the smallest d
    falling: bool = False


def observe(curves: Sequence[Curve], criteria: Criteria = Criteria()) -> Outcome:
    """The measured outcome of one cell from its curves (one per d), in this order:

    1. **no ODE** — a run diverged, or the relative replica spread of the final squared
       norm q = tr Q/p (the order parameter the SGD noise drives) shrinks from the
       smallest to the largest d by less than a factor (d_max/d_min)^(−1/4); where a
       deterministic limit exists the spread falls as d^(−1/2).
    2. **bad learning** — at the largest d the level L (replica-mean risk averaged over the
       last half decade of time) ends near or above the start, L ≥ R(0)/2; or L grows
       with d faster than d^(1/8): the learning term is switched off as d grows.
    3. **perfect learning** — the risk is orders of magnitude below its start,
       L ≤ 10⁻² R(0), and still going down: it keeps falling in time (L ≤ ½ × the level
       of the half decade before, or L ≤ 10⁻⁶ R(0), numerically zero), or it falls with
       d faster than d^(−1/8) (the finite-d noise floor ∝ Δ d^(−(κ+δ)) of the green
       region).
    4. **plateau** — otherwise: the risk has settled at a level that does not change with
       d (on the blue line it is ∝ Δ).

    With a single d (or a single ODE curve) the d-trends are unavailable and rules 1–3
    use the rest. Thresholds: :class:`Criteria`.
    """
    if not curves:
        raise ValueError("observe needs at least one curve")
    curves = sorted(curves, key=lambda c: c.d)
    small, big = curves[0], curves[-1]
    c = criteria
    level, initial = big.level(c.window), big.initial
    ds = np.array([cv.d for cv in curves], dtype=float)
    levels = np.array([cv.level(c.window) for cv in curves])
    slope = math.nan
    if np.unique(ds).size > 1 and np.all(levels > 0):
        slope = float(np.polyfit(np.log(ds), np.log(levels), 1)[0])
    ratio = big.spread / small.spread if big.d > small.d and small.spread > 0 else math.nan
    previous = big.level(c.window, back=1)
    falling = bool(level <= c.negligible * initial or level <= c.falling * previous)

    def outcome(region: Region) -> Outcome:
        return Outcome(region, level, initial, slope, ratio, falling)

    if any(cv.diverged for cv in curves) or not math.isfinite(level):
        return outcome(Region.NO_ODE)
    if ratio > (big.d / small.d) ** (-c.spread_exponent):
        return outcome(Region.NO_ODE)
    if level >= c.near_start * initial or slope > c.d_exponent:
        return outcome(Region.BAD)
    if level <= c.learned * initial and (falling or slope < -c.d_exponent):
        return outcome(Region.PERFECT)
    return outcome(Region.PLATEAU)


# ----- cells of the diagram ----------------------------------------------------------------------

CSV_COLUMNS = ("kappa", "delta", "d_values", "risk_final_mean", "risk_final_se", "regime_theory", "regime_observed",
               "risk_initial_mean", "level", "d_slope", "spread_ratio", "replicas", "noise", "gamma0", "t_max")


@dataclass(frozen=True)
class Cell:
    """One point (κ, δ) of the diagram: theory, measurement and the numbers behind it."""

    kappa: Fraction
    delta: Fraction
    d_values: tuple[int, ...]
    outcome: Outcome
    risk_final_mean: float
    risk_final_se: float
    replicas: int
    info: dict[str, Any] = field(default_factory=dict)  # noise, gamma0, t_max of the cell

    @property
    def theory(self) -> Region:
        return classify(self.kappa, self.delta)

    def row(self) -> dict[str, Any]:
        """The ``phase_diagram.csv`` row (:data:`CSV_COLUMNS`)."""
        o = self.outcome
        return {
            "kappa": _decimal(self.kappa), "delta": _decimal(self.delta),
            "d_values": ";".join(str(d) for d in self.d_values) or "inf",
            "risk_final_mean": f"{self.risk_final_mean:.6g}", "risk_final_se": f"{self.risk_final_se:.3g}",
            "regime_theory": self.theory.value, "regime_observed": o.region.value,
            "risk_initial_mean": f"{o.initial:.6g}", "level": f"{o.level:.6g}", "d_slope": f"{o.d_slope:.3g}",
            "spread_ratio": f"{o.spread_ratio:.3g}", "replicas": self.replicas, **self.info,
        }  # fmt: skip


def _decimal(x: Fraction) -> str:
    """0.25 for 1/4; a fraction that is no short decimal stays a fraction (1/3)."""
    return f"{float(x):g}" if Fraction(f"{float(x):g}") == x else str(x)


def sweep_cells(rows: Sequence[dict[str, Any]], criteria: Criteria = Criteria()) -> list[Cell]:
    """One :class:`Cell` per (κ, δ) of a sweep's rows (:func:`load_sweep`): runs at the
    same d are pooled as replicas (seeds, replica offsets), the d values feed the
    d-trends of :func:`observe`. A cell must not mix Δ, γ0, k or t_max: filter the rows
    first (``load_sweep(dir, noise=...)``)."""
    groups: dict[tuple[Fraction, Fraction], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[exact(row["kappa"]), exact(row["delta"])].append(row)
    cells = []
    for (kappa, delta), members in sorted(groups.items()):
        physics = {(r["noise"], r["gamma0"], r["k"], r["t_max"]) for r in members}
        if len(physics) > 1:
            raise ValueError(f"cell (kappa={kappa}, delta={delta}) mixes (noise, gamma0, k, t_max) = {sorted(physics)}; "
                             "select one, e.g. load_sweep(dir, noise=1e-3)")
        by_d: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in members:
            by_d[int(r["d"])].append(r)
        curves = []
        for d, runs in sorted(by_d.items()):
            arrays = [dict(np.load(Path(r["path"]) / "results.npz")) for r in runs]
            curves.append(Curve.pool(d, arrays, diverged=any(r["status"] != "finished" for r in runs)))
        mean, se = curves[-1].final()
        noise, gamma0, _, t_max = physics.pop()
        cells.append(Cell(kappa, delta, tuple(sorted(by_d)), observe(curves, criteria), mean, se, curves[-1].risk.shape[0],
                          {"noise": noise, "gamma0": gamma0, "t_max": t_max}))
    return cells


def write_cells(cells: Sequence[Cell], path: str | os.PathLike) -> None:
    """``phase_diagram.csv``: one row per cell, columns :data:`CSV_COLUMNS`."""
    write_csv([c.row() for c in cells], path, CSV_COLUMNS)


# ----- the diagram from the asymptotic ODEs ------------------------------------------------------

# Tried in turn by :func:`solve`: BDF crosses the stiff late plateaus in few steps (rtol 1e-4
# leaves ~1e-4 relative error on R); dopri5 where BDF strays out of the physical region Ω ≥ 0.
SOLVERS = (("BDF", 1e-4, 1e-8), ("dopri5", 1e-6, 1e-9))


def solve(Q0: Any, M0: Any, P: Any, solvers: Sequence[tuple[str, float, float]] = SOLVERS, **options: Any):
    """:func:`phasesgd.ode.solve_ode` with the first of ``solvers`` (method, rtol, atol)
    that succeeds; None (and a warning) when all fail or no ODE exists (no-ODE region)."""
    from .ode import solve_ode

    for method, rtol, atol in solvers:
        try:
            return solve_ode(Q0, M0, P, method=method, rtol=rtol, atol=atol, **options)
        except (ValueError, RuntimeError, AssertionError) as err:  # UnphysicalStateError is a RuntimeError
            log.info("ODE with %s failed: %s", method, err)
    log.warning("no ODE solution: every solver failed (%s)", ", ".join(m for m, _, _ in solvers))
    return None


TIGHT = (("BDF", 1e-8, 1e-12), ("dopri5", 1e-8, 1e-11))


def ode_cells(
    kappas: Sequence[Number],
    deltas: Sequence[Number],
    *,
    k: int = 1,
    p0: float = 1.0,
    rate: float = 4.0,
    noise: float = 1e-3,
    t_max: float = 100.0,
    d_ref: int = 16,
    d_init: int = 1000,
    activation: str = "erf",
    seed: int = 0,
    criteria: Criteria = Criteria(),
) -> list[Cell]:
    """The diagram from the d → ∞ ODEs alone (THEORY §5). Each cell (κ, δ) integrates its
    region's asymptotic equations — drift term γ0/p0, noise term (γ0/p0)², or only one of
    them — for a student of p = round(p0·d_ref^κ) units with γ0/p0 = ``rate``, from the
    overlaps of Gaussian weights in d_init dimensions, up to ``t_max`` in the region's own
    time t = ν/d^(1+ϑ). Cells with the same equations (same region and p) share one solve.
    No ODE exists in the no-ODE region: those cells are no-ODE by construction. Tolerances
    are tight (:data:`TIGHT`) so that a perfectly learnt risk reaches ~10⁻⁶ R(0).
    """
    import torch

    from .networks import CommitteeStudent, Teacher
    from .order_parameters import order_parameters
    from .timegrid import log_times

    teacher = Teacher(width=k, dim=d_init, activation=activation, seed=seed, dtype="float64")
    t_eval = log_times(t_max)
    solved: dict[tuple[Region, int], tuple[Outcome, float]] = {}
    cells = []
    for kappa in kappas:
        for delta in deltas:
            kappa_f, delta_f = exact(kappa), exact(delta)
            region = classify(kappa_f, delta_f)
            p = student_width(p0, d_ref, kappa_f)
            if (region, p) not in solved:
                if region is Region.NO_ODE:
                    solved[region, p] = Outcome(Region.NO_ODE, math.nan, math.nan), math.nan
                else:
                    student = CommitteeStudent(width=p, dim=d_init, activation=activation, seed=seed, dtype="float64")
                    Q0, M0, P = order_parameters(student.weight, teacher.weight, torch.float64)
                    p0_cell = p * d_ref ** (-float(kappa_f))  # the p0 that the asymptotic prefactors infer
                    sol = solve(Q0[0], M0[0], P, TIGHT, gamma0=rate * p0_cell, delta=float(delta_f), kappa=float(kappa_f),
                                noise=noise, d=d_ref, teacher_activation=activation, student_activation=activation,
                                t_eval=t_eval, mode="asymptotic")
                    if sol is None:
                        solved[region, p] = Outcome(Region.NO_ODE, math.nan, math.nan), math.nan
                    else:
                        curve = Curve(d_ref, sol.t, sol.risk[None, :], np.full(1, math.nan))
                        solved[region, p] = observe([curve], criteria), float(sol.risk[-1])
            outcome, final = solved[region, p]
            info = {"noise": noise, "gamma0": f"{rate:g}*p0", "t_max": t_max}
            cells.append(Cell(kappa_f, delta_f, (), outcome, final, 0.0, 1, info))
    return cells


# ----- drawing ---------------------------------------------------------------------------------------


def _spacing(values: Sequence[float]) -> float:
    steps = np.diff(np.unique(values))
    return float(steps.min()) if steps.size else 0.25


def draw_diagram(cells: Sequence[Cell], path: str | os.PathLike, title: str = "") -> None:
    """The (δ, κ) plane: the theory's regions shaded in the background, each cell a square
    coloured by its measured outcome (a cross where it differs from the theory), and the
    boundaries κ = −δ (plateau line) and κ = −2δ − 1, i.e. −δ = (κ+1)/2 (no-ODE onset)."""
    deltas = [float(c.delta) for c in cells]
    kappas = [float(c.kappa) for c in cells]
    hx, hy = _spacing(deltas) / 2, _spacing(kappas) / 2
    x0, x1, y0, y1 = min(deltas) - hx, max(deltas) + hx, min(kappas) - hy, max(kappas) + hy
    fig, ax = plt.subplots(figsize=(7.8, 4.8))

    order = list(COLOURS)
    xs, ys = np.linspace(x0, x1, 161), np.linspace(y0, y1, 121)
    theory = np.array([[order.index(classify(round(float(y), 6), round(float(x), 6))) for x in xs] for y in ys])
    cmap = ListedColormap([COLOURS[r] for r in order])
    ax.imshow(theory, origin="lower", extent=(x0, x1, y0, y1), cmap=cmap, vmin=-0.5, vmax=3.5, alpha=0.25, aspect="auto")
    for c in cells:
        x, y, region = float(c.delta), float(c.kappa), c.outcome.region
        ax.add_patch(plt.Rectangle((x - 0.6 * hx, y - 0.6 * hy), 1.2 * hx, 1.2 * hy, facecolor=COLOURS[region], edgecolor="k", lw=0.6))
        if region is not c.theory:
            ax.plot(x, y, "kx", ms=8, mew=1.5)
    line = np.linspace(x0, x1, 2)
    ax.plot(line, -line, color="navy", lw=2, zorder=3, label="κ = −δ (plateau line)")
    ax.plot(line, -2 * line - 1, "k--", lw=1.5, zorder=3, label="−δ = (κ+1)/2 (no-ODE onset)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[r]) for r in order]
    regions = ax.legend(handles, [r.value.replace("_", " ") for r in order], loc="upper left", bbox_to_anchor=(1.01, 1),
                        fontsize=8, title="cell: measured\nshade: theory", title_fontsize=8)
    ax.add_artist(regions)
    ax.legend(loc="lower left", bbox_to_anchor=(1.01, 0), fontsize=8)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(r"$\delta$   (learning rate $\gamma = \gamma_0\, d^{-\delta}$)")
    ax.set_ylabel(r"$\kappa$   (width $p = p_0\, d^{\kappa}$)")
    ax.set_title(title + ("\n" if title else "") + "× : measured outcome differs from the theory (THEORY §5)", fontsize=9)
    save_figure(fig, path)
