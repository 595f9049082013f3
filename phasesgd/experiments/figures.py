"""The runs of a figure and their ODEs: a curve preset's sweep run (or read back), grouped
into panels and curves, with the ODE line of each, drawn and tabulated.

:func:`reproduce` runs what is missing of a preset's sweep (finished runs are skipped),
solves the ODEs (:func:`ode_risk`, cached beside each run), and writes ``<name>.png``
(:func:`phasesgd.viz.curves.draw_curves`) and ``<name>.csv`` (the data behind it) into the
sweep folder. Here a run is one ``scripts/train.py`` job; its physics is
:class:`~phasesgd.theory.physics.RunPhysics` of its stored config, the one description the
ODE and the clock read. The diagram presets go to :mod:`phasesgd.experiments.diagram.preset`.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..infra.io import save_npz
from ..infra.statistics import mean_and_error
from ..ode import ODEBudgetExceeded, SolverOptions, UnphysicalStateError, solve_ode
from ..theory.order_parameters import Overlaps
from ..theory.physics import RunPhysics
from ..theory.scaling import Region
from ..viz.curves import Panel, Series, draw_curves
from ..viz.plotting import clock_text
from .diagram.preset import reproduce_diagram
from .presets import PRESETS, SYMBOLS, Preset, default_dir
from .sweeps import job_dir, read_row, run_sweep, sweep_jobs
from .tables import write_csv

log = logging.getLogger(__name__)

# The ODE package's own choice of method (dopri5, then BDF once stiff); part of a cached solve's identity.
SOLVER = SolverOptions(method="auto")


@dataclass(frozen=True)
class Run:
    """One finished (or stopped) run of a figure: its job overrides, summary row and arrays."""

    job: dict[str, str]
    row: dict[str, Any]
    results: dict[str, np.ndarray]

    @property
    def path(self) -> Path:
        return Path(self.row["path"])

    @cached_property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load(str(self.results["config"]))

    @cached_property
    def physics(self) -> RunPhysics:
        return RunPhysics.from_config(self.config)

    @property
    def time_exponent(self) -> Fraction:
        """1 + ϑ of the run's clock t = ν/d^(1+ϑ), exactly."""
        return 1 + self.physics.scaling.exact_time_exponent


def pool(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray]:
    """The times (T,) and risk (R, T) of all replicas of runs of the same physics (seeds,
    replica offsets) on the longest run's times; a replica whose run stopped early is NaN
    after its last measurement."""
    t = max((run.results["t"] for run in runs), key=lambda t: t.size)
    pad = lambda r: np.pad(r.astype(float), ((0, 0), (0, t.size - r.shape[1])), constant_values=np.nan)  # noqa: E731
    return t, np.concatenate([pad(run.results["risk"]) for run in runs])


def ode_risk(run: Run, mode: str) -> np.ndarray | None:
    """R(t) of the ODE of ``mode`` ('asymptotic' or 'finite') from each replica's initial
    overlaps, (R, T), on the run's times; None in the no-ODE region or when the solve fails
    (with a warning). Cached in ``<run>/ode_<mode>.npz`` (valid for the same run — config
    hash and times — and the same :data:`SOLVER`)."""
    if run.physics.scaling.region is Region.NO_ODE:
        return None
    cache, t, identity = run.path / f"ode_{mode}.npz", run.results["t"], str(run.row["config_hash"])
    if cache.exists():
        saved = np.load(cache)
        same_solver = "solver" in saved.files and str(saved["solver"]) == repr(SOLVER)
        if same_solver and str(saved["config_hash"]) == identity and np.array_equal(saved["t"], t):
            return saved["risk"]
    r = run.results
    try:
        sol = solve_ode(Overlaps(r["Q0"], r["M0"], r["P"], r["a0"]), run.physics, t, mode=mode, solver=SOLVER)
    except (ValueError, UnphysicalStateError, ODEBudgetExceeded) as err:
        log.warning("no %s ODE for %s: %s", mode, run.path.name, err)
        return None
    risk = np.atleast_2d(sol.risk)
    save_npz(cache, t=t, risk=risk, config_hash=np.array(identity), solver=np.array(repr(SOLVER)))
    return risk


# ----- a figure's panels and rows ------------------------------------------------------------------


def value_label(key: str, value: str, run: Run) -> str:
    """'Δ = 1e-3', 'd = 100', or for a region point 'bad: κ = 0, δ = -0.25, p = 8'."""
    if key == "point":
        r = run.row
        return f"{value}: κ = {r['kappa']:g}, δ = {r['delta']:g}, p = {r['p']}"
    return f"{SYMBOLS.get(key, key)} = {value}"


def clock_label(runs: Sequence[Run]) -> str:
    """The time axis, t = ν/d^(1+ϑ) with the runs' common exponent."""
    exponents = {run.time_exponent for run in runs}
    if len(exponents) > 1:
        return "t = ν/d^(1+ϑ), ϑ of each curve's region"
    return clock_text(exponents.pop())


def figure_panels(preset: Preset, runs: Sequence[Run]) -> tuple[list[Panel], list[dict[str, Any]]]:
    """The panels of the preset's figure — one per value of ``preset.panels``, in each one
    curve per value of ``preset.curves`` with its ODE — and the long-format rows of its CSV."""
    groups: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        panel = run.job.get(preset.panels, "") if preset.panels else "all"
        groups[panel][run.job.get(preset.curves, "")].append(run)
    panels, rows = [], []
    for panel, curves in groups.items():
        series = []
        for value, members in curves.items():
            t, risk = pool(members)
            ode = None
            if preset.ode and not preset.ode_per_panel:
                parts = [ode_risk(m, preset.ode) for m in members]
                ode = np.concatenate(parts) if all(p is not None for p in parts) else None
            label = value_label(preset.curves, value, members[0])
            series.append(Series(label, t, risk, ode))
            rows += _rows(panel, label, members[0], t, risk, ode)
        panel_runs = [m for ms in curves.values() for m in ms]
        reference = None
        if preset.ode and preset.ode_per_panel:
            largest = max(panel_runs, key=lambda m: m.row["d"])
            ode = ode_risk(largest, preset.ode)
            if ode is not None:
                reference = Series(f"ODE ({preset.ode})", largest.results["t"], None, ode)
                rows += _rows(panel, reference.label, largest, reference.t, None, ode)
        title = f"{SYMBOLS.get(preset.panels, preset.panels)} = {panel}" if preset.panels else ""
        panels.append(Panel(title, clock_label(panel_runs), series, reference))
    return panels, rows


def _rows(
    panel: str, curve: str, run: Run, t: np.ndarray, risk: np.ndarray | None, ode: np.ndarray | None
) -> list[dict[str, Any]]:
    """CSV rows of one curve: replica mean and s.e. of the simulation (NaN for an ODE-only
    line), and the mean of its ODE lines (NaN without)."""
    head = {"panel": panel, "curve": curve} | {
        key: run.row[key] for key in ("d", "p", "kappa", "delta", "noise", "gamma0")
    }
    nan = np.full(t.size, math.nan)
    mean, se = (nan, nan) if risk is None else mean_and_error(risk)
    line = nan if ode is None else ode.mean(0)
    return [
        head
        | {"t": f"{t[i]:.6g}", "risk_mean": f"{mean[i]:.6g}", "risk_se": f"{se[i]:.3g}", "risk_ode": f"{line[i]:.6g}"}
        for i in range(t.size)
    ]


def shared_parameters(runs: Sequence[Run]) -> str:
    """What every run of a figure shares, e.g. 'erf, k = 4, p = 8, γ0 = 8, Δ = 0.001, d = 1000, 4 replicas per run'."""
    names = {"k": "k", "p": "p", "gamma0": "γ0", "noise": "Δ", "d": "d", "kappa": "κ", "delta": "δ"}
    activations = {str(r.config["student"]["activation"]) for r in runs}
    parts = [activations.pop()] if len(activations) == 1 else []
    for key, symbol in names.items():
        values = {r.row[key] for r in runs}
        if len(values) == 1:
            parts.append(f"{symbol} = {values.pop():g}")
    replicas = {r.row["replicas"] for r in runs}
    return ", ".join(parts + ([f"{replicas.pop()} replicas per run"] if len(replicas) == 1 else []))


# ----- one command ------------------------------------------------------------------------------------


def reproduce(
    name: str,
    quick: bool = False,
    sweep_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    run: bool = True,
) -> Path:
    """Run (or, with ``run=False``, only read) the preset's sweep into ``sweep_dir`` and
    draw its figure there: ``<name>.png`` and ``<name>.csv`` (diagram presets:
    ``phase_diagram.png`` and ``phase_diagram.csv``). Returns the PNG's path."""
    if name not in PRESETS:
        raise ValueError(f"unknown figure {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    sweep_dir = Path(sweep_dir) if sweep_dir else default_dir(name, quick)
    if preset.kind == "diagram":
        return reproduce_diagram(name, sweep_dir, quick=quick, overrides=overrides)
    extra = [*(preset.quick if quick else ()), *overrides]
    jobs = sweep_jobs([f"experiment={name}", *extra])
    if run:
        run_sweep(jobs, sweep_dir)
    found = [(job, job_dir(sweep_dir, job)) for job in jobs]
    found = [(job, folder) for job, folder in found if (folder / "summary.json").exists()]
    if not found:
        raise FileNotFoundError(f"no finished runs of {name} under {sweep_dir}")
    title = preset.title + (f"\nquick, scaled-down version: {' '.join(preset.quick)}" if quick else "")
    if overrides:
        title += f"\noverrides: {' '.join(overrides)}"
    runs = [
        Run(dict(o.split("=", 1) for o in job), read_row(folder), dict(np.load(folder / "results.npz")))
        for job, folder in found
    ]
    panels, rows = figure_panels(preset, runs)
    png = sweep_dir / f"{name}.png"
    draw_curves(panels, png, f"{title}\n{shared_parameters(runs)}", preset.ode if not preset.ode_per_panel else None)
    write_csv(rows, sweep_dir / f"{name}.csv")
    return png
