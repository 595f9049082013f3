"""The paper's figures as presets: which runs and which ODEs each needs, and how it is drawn.

A preset named N is the experiment ``conf/experiment/N.yaml``: its physics and, in
``hydra.sweeper.params``, the grid of runs — so ``scripts/train.py -m experiment=N`` runs
exactly the figure's runs (locally, or on a cluster with ``hydra/launcher=slurm``). This
module adds how the runs are grouped (one panel per value of ``panels``, one curve per value
of ``curves``; seeds and replica offsets of the same point are pooled), which ODE goes
over them, and the scaled-down ``quick`` overrides. :func:`reproduce` runs what is missing
(finished runs are skipped), solves the ODEs (cached beside each run), and writes
``<name>.png`` and ``<name>.csv`` (the data behind it) into the sweep folder.

Every curve is drawn by one routine, :func:`draw_curves`: simulation markers (replica mean ±
standard error) over ODE lines on log-log axes (``phasesgd.plotting.risk_axes``).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .io import save_npz
from .phase_diagram import Curve, draw_diagram, job_dir, read_row, run_sweep, solve, sweep_cells, sweep_jobs, write_cells, write_csv
from .physics import RunPhysics
from .plotting import mean_and_error, plt, risk_axes, save_figure
from .regimes import Region, classify, exact, natural_time_exponent

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = {"teacher.noise": "Δ", "d": "d", "lr.delta": "δ", "kappa": "κ", "lr.gamma0": "γ0", "seed": "seed"}


@dataclass(frozen=True)
class Preset:
    """A figure: ``curves`` / ``panels`` are sweep keys of its experiment; ``ode`` is
    'asymptotic' (the d → ∞ equations of the run's region), 'finite' (the ODE at the run's
    own γ, p, d) or None; ``ode_per_panel`` draws one ODE line per panel, from the initial
    overlaps of its largest-d run (for series in d), instead of one per curve; ``quick``
    are the overrides of the CPU-sized version; ``kind='diagram'`` draws the phase diagram."""

    name: str
    title: str
    curves: str = ""
    panels: str | None = None
    ode: str | None = "asymptotic"
    ode_per_panel: bool = False
    quick: tuple[str, ...] = ()
    kind: str = "curves"


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("blue_line_noise", "blue line κ = δ = 0 (k = 4, p = 8, γ0 = 8): plateau ∝ Δ",
           curves="teacher.noise", quick=("d=100", "t_max=1000", "replicas=4")),
    Preset("blue_line_d", "blue line κ = δ = 0, Δ = 10⁻³: simulations approach the ODE as d grows",
           curves="d", ode_per_panel=True, quick=("d=30,100,300", "t_max=1000", "replicas=4")),
    Preset("green_region", "green region κ = 0 (perfect learning), Δ = 10⁻²: noise floor falls with d",
           curves="d", panels="lr.delta", ode_per_panel=True, quick=("d=20,50", "t_max=1000", "replicas=4")),
    Preset("lr_family", "γ = γ0 d^−δ at κ = 0, all on t = ν/d (ϑ = 0), Δ = 10⁻³; lines: finite-d ODE",
           curves="lr.delta", ode="finite", quick=("d=100", "t_max=1000", "replicas=4")),
    Preset("orange_region", "orange region κ = 0, δ = −3/8 (bad learning): risk rises, d → ∞ slowly",
           curves="d", ode_per_panel=True, quick=("t_max=300", "replicas=4")),
    Preset("regions", "one curve per region, each on its own clock t = ν/d^(1+ϑ)",
           curves="point", quick=("d=50", "replicas=4")),
    Preset("phase_diagram", "phase diagram measured from simulations (k = p0 = 1, γ0 = 4, Δ = 10⁻³)",
           kind="diagram", quick=("d=16,81", "t_max=50")),
)}  # fmt: skip


# ----- runs and their ODEs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One finished (or stopped) run of a figure: its job overrides, summary row and arrays."""

    job: dict[str, str]
    row: dict[str, Any]
    results: dict[str, np.ndarray]

    @property
    def path(self) -> Path:
        return Path(self.row["path"])

    @property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load(str(self.results["config"]))

    @property
    def time_exponent(self) -> Fraction:
        """1 + ϑ of t = ν/d^(1+ϑ)."""
        theta = self.config.get("theta")
        return 1 + (natural_time_exponent(self.row["kappa"], self.row["delta"]) if theta is None else exact(theta))


def ode_risk(run: Run, mode: str) -> np.ndarray | None:
    """R(t) of the ODE of ``mode`` from each replica's initial overlaps, (R, T), on the
    run's times; None in the no-ODE region or when every solver fails (:func:`solve`).
    Cached in ``<run>/ode_<mode>.npz`` (valid for the same run: config hash and times)."""
    if classify(run.row["kappa"], run.row["delta"]) is Region.NO_ODE:
        return None
    cache, t, identity = run.path / f"ode_{mode}.npz", run.results["t"], str(run.row["config_hash"])
    if cache.exists():
        saved = np.load(cache)
        if str(saved["config_hash"]) == identity and np.array_equal(saved["t"], t):
            return saved["risk"]
    args = RunPhysics.from_config(run.config).ode_arguments() | {"second_layer": run.results["a0"], "t_eval": t, "mode": mode}
    sol = solve(run.results["Q0"], run.results["M0"], run.results["P"], **args)
    if sol is None:
        return None
    risk = np.atleast_2d(sol.risk)
    save_npz(cache, t=t, risk=risk, config_hash=np.array(identity))
    return risk


# ----- drawing ---------------------------------------------------------------------------------------


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
        return "t = ν / d^(1+ϑ), ϑ of each curve's region"
    (e,) = exponents
    return "t = ν / d" if e == 1 else f"t = ν / d^{e}" if e.denominator == 1 else f"t = ν / d^({e})"


def draw_curves(preset: Preset, runs: Sequence[Run], path: Path, title: str) -> list[dict[str, Any]]:
    """The generic figure: one panel per value of ``preset.panels``, in each one curve per
    value of ``preset.curves`` (simulation markers, replica mean ± s.e.) and the ODE lines.
    Returns the long-format rows of the figure's CSV."""
    panels: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        panels[run.job.get(preset.panels, "") if preset.panels else ""][run.job.get(preset.curves, "")].append(run)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    rows: list[dict[str, Any]] = []
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        for i, (value, members) in enumerate(curves.items()):
            curve = Curve.pool(int(members[0].row["d"]), [m.results for m in members])
            ode = None
            if preset.ode and not preset.ode_per_panel:
                parts = [ode_risk(m, preset.ode) for m in members]
                ode = np.concatenate(parts) if all(p is not None for p in parts) else None
            label = value_label(preset.curves, value, members[0])
            risk_axes(ax, curve.t, curve.risk, ode, label=label, color=f"C{i}")
            rows += _rows(panel, label, members[0], curve.t, curve.risk, ode)
        if preset.ode and preset.ode_per_panel:
            largest = max((m for ms in curves.values() for m in ms), key=lambda m: m.row["d"])
            ode = ode_risk(largest, preset.ode)
            if ode is not None:
                ax.plot(largest.results["t"][1:], ode.mean(0)[1:], "k-", lw=1.5, label=f"ODE ({preset.ode})")
                rows += _rows(panel, f"ODE ({preset.ode})", largest, largest.results["t"], None, ode)
        panel_runs = [m for ms in curves.values() for m in ms]
        ax.set_xlabel(clock_label(panel_runs))
        ax.set_title(f"{SYMBOLS.get(preset.panels, preset.panels)} = {panel}" if preset.panels else "", fontsize=10)
    _legend(axes[0][-1], preset)
    fig.suptitle(title, fontsize=10, y=1.0 + 0.035 * title.count("\n"))
    save_figure(fig, path)
    return rows


def _legend(ax: plt.Axes, preset: Preset) -> None:
    """One entry per curve (its markers), the panel ODE line, outside the axes on the right."""
    handles, labels = ax.get_legend_handles_labels()
    keep = [(h, lab.removesuffix(" simulation")) for h, lab in zip(handles, labels) if not lab.endswith(" ODE")]
    lines = "" if preset.ode is None or preset.ode_per_panel else f"lines: {preset.ode} ODE, "
    ax.legend(*zip(*keep), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              title=f"{lines}markers: simulations\n(replica mean ± s.e.)", title_fontsize=7)


def _rows(panel: str, curve: str, run: Run, t: np.ndarray, risk: np.ndarray | None, ode: np.ndarray | None) -> list[dict[str, Any]]:
    """CSV rows of one curve: replica mean and s.e. of the simulation (NaN for an ODE-only
    line), and the mean of its ODE lines (NaN without)."""
    r = run.row
    head = {"panel": panel, "curve": curve, "d": r["d"], "p": r["p"], "kappa": r["kappa"], "delta": r["delta"],
            "noise": r["noise"], "gamma0": r["gamma0"]}
    nan = np.full(t.size, math.nan)
    mean, se = (nan, nan) if risk is None else mean_and_error(risk)
    line = nan if ode is None else ode.mean(0)
    return [head | {"t": f"{t[i]:.6g}", "risk_mean": f"{mean[i]:.6g}", "risk_se": f"{se[i]:.3g}", "risk_ode": f"{line[i]:.6g}"}
            for i in range(t.size)]


# ----- one command ------------------------------------------------------------------------------------


def default_dir(name: str, quick: bool) -> Path:
    """multirun/figures/<name>[_quick] (git-ignored)."""
    return ROOT / "multirun" / "figures" / (f"{name}_quick" if quick else name)


def reproduce(name: str, quick: bool = False, sweep_dir: str | os.PathLike | None = None,
              overrides: Sequence[str] = (), run: bool = True) -> Path:
    """Run (or, with ``run=False``, only read) the preset's sweep into ``sweep_dir`` and
    draw its figure there: ``<name>.png`` and ``<name>.csv``. Returns the PNG's path."""
    if name not in PRESETS:
        raise ValueError(f"unknown figure {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    sweep_dir = Path(sweep_dir) if sweep_dir else default_dir(name, quick)
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
    png = sweep_dir / f"{name}.png"
    if preset.kind == "diagram":
        cells = sweep_cells([read_row(folder) for _, folder in found])
        write_cells(cells, sweep_dir / "phase_diagram.csv")
        draw_diagram(cells, png, title)
        return png
    runs = [Run(dict(o.split("=", 1) for o in job), read_row(folder), dict(np.load(folder / "results.npz")))
            for job, folder in found]
    rows = draw_curves(preset, runs, png, title)
    write_csv(rows, sweep_dir / f"{name}.csv")
    return png
