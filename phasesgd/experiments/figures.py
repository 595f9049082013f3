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
standard error) over ODE lines on log-log axes (``phasesgd.viz.plotting.risk_axes``), with the
legend below the axes. The diagram presets (``phase_diagram``, ``no_ode_boundary``) take
their grid from the experiment's ``diagram`` block and are measured by
:func:`reproduce_diagram` (:mod:`phasesgd.experiments.diagram.measure`), not swept through ``train.py``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.lines import Line2D

from ..infra.io import save_npz
from ..infra.paths import PROJECT_ROOT
from ..ode import ODEBudgetExceeded, UnphysicalStateError, solve_ode
from ..theory.physics import RunPhysics
from ..theory.scaling import Region, classify, exact, natural_time_exponent
from ..viz.diagram import draw_diagram
from ..viz.plotting import mean_and_error, plt, risk_axes, save_figure
from .diagram.cells import Curve
from .diagram.measure import boundary_rows, measure_diagram, parse_dimensions, parse_list, write_diagram
from .diagram.probes import Setup
from .sweeps import compose_config, job_dir, read_row, run_sweep, sweep_jobs
from .tables import write_csv

log = logging.getLogger(__name__)

# The ODE is deterministic: a few initial conditions average its small-d dependence on the draw,
# and its cost grows with them (the I4 sum is O(p²(p+k)²) per initial condition).
ODE_INITIAL_CONDITIONS = 4
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
    Preset("wide_students", "wide students p = d^κ (paper Fig. 8), each on t = ν/d^(1+ϑ)",
           curves="point", ode=None, quick=("d=16", "t_max=1000", "replicas=4")),
    Preset("phase_diagram", "measured phase diagram", kind="diagram"),
    Preset("no_ode_boundary", "where concentration is lost: δ across both candidate no-ODE lines", kind="diagram"),
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


# Tried in turn by :func:`solve`: BDF crosses the stiff late plateaus in few steps (rtol 1e-4
# leaves ~1e-4 relative error on R); dopri5 where BDF strays out of the physical region Ω ≥ 0.
SOLVERS = (("BDF", 1e-4, 1e-8), ("dopri5", 1e-6, 1e-9))


def solve(Q0: Any, M0: Any, P: Any, solvers: Sequence[tuple[str, float, float]] = SOLVERS, **options: Any):
    """:func:`phasesgd.ode.solve_ode` with the first of ``solvers`` (method, rtol, atol)
    that succeeds; None (and a warning) when all fail."""
    for method, rtol, atol in solvers:
        try:
            return solve_ode(Q0, M0, P, method=method, rtol=rtol, atol=atol, **options)
        except (ValueError, UnphysicalStateError, ODEBudgetExceeded) as err:
            log.info("ODE with %s failed: %s", method, err)
    log.warning("no ODE solution: every solver failed (%s)", ", ".join(m for m, _, _ in solvers))
    return None


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
        panels[run.job.get(preset.panels, "") if preset.panels else "all"][run.job.get(preset.curves, "")].append(run)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 5.6), squeeze=False)
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
        ax.set_title(f"{SYMBOLS.get(preset.panels, preset.panels)} = {panel}" if preset.panels else "", fontsize=11)
    for ax in axes[0]:
        _legend(ax, preset)
    fig.suptitle(title, fontsize=11, y=1.0 + 0.04 * title.count("\n"))
    save_figure(fig, path)
    return rows


def _legend(ax: plt.Axes, preset: Preset) -> None:
    """Below the axes, ≥ 9 pt: one entry per curve (its colour, marker and line), then what
    the marker and line styles mean."""
    handles, labels = ax.get_legend_handles_labels()
    entries = {}
    for h, lab in zip(handles, labels):
        name = lab.removesuffix(" simulation").removesuffix(" ODE")
        if lab.startswith("ODE ("):
            entries[lab] = h
        elif name not in entries:
            colour = h.get_color() if hasattr(h, "get_color") else h[0].get_color()
            entries[name] = Line2D([], [], color=colour, marker="o", ms=4, ls="-" if preset.ode and not preset.ode_per_panel else "")
    style = [Line2D([], [], color="grey", marker="o", ms=4, ls="", label="markers: simulation, replica mean ± s.e.")]
    if preset.ode and not preset.ode_per_panel:
        style.append(Line2D([], [], color="grey", ls="-", lw=1.5, label=f"lines: {preset.ode} ODE"))
    ax.legend(
        [*entries.values(), *style],
        [*entries, *(h.get_label() for h in style)],
        fontsize=9,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=2,
        frameon=False,
    )


def _rows(panel: str, curve: str, run: Run, t: np.ndarray, risk: np.ndarray | None, ode: np.ndarray | None) -> list[dict[str, Any]]:
    """CSV rows of one curve: replica mean and s.e. of the simulation (NaN for an ODE-only
    line), and the mean of its ODE lines (NaN without)."""
    r = run.row
    head = {
        "panel": panel,
        "curve": curve,
        "d": r["d"],
        "p": r["p"],
        "kappa": r["kappa"],
        "delta": r["delta"],
        "noise": r["noise"],
        "gamma0": r["gamma0"],
    }
    nan = np.full(t.size, math.nan)
    mean, se = (nan, nan) if risk is None else mean_and_error(risk)
    line = nan if ode is None else ode.mean(0)
    return [
        head | {"t": f"{t[i]:.6g}", "risk_mean": f"{mean[i]:.6g}", "risk_se": f"{se[i]:.3g}", "risk_ode": f"{line[i]:.6g}"} for i in range(t.size)
    ]


# ----- one command ------------------------------------------------------------------------------------


def shared_parameters(runs: Sequence[Run]) -> str:
    """The parameters every run of a figure shares, e.g. 'erf, k = 4, p = 8, γ0 = 8, Δ = 0.001, d = 1000, 4 replicas'."""
    names = {"k": "k", "p": "p", "gamma0": "γ0", "noise": "Δ", "d": "d", "kappa": "κ", "delta": "δ"}
    parts = [str(runs[0].config["student"]["activation"])] if len({str(r.config["student"]["activation"]) for r in runs}) == 1 else []
    for key, symbol in names.items():
        values = {r.row[key] for r in runs}
        if len(values) == 1:
            parts.append(f"{symbol} = {values.pop():g}")
    replicas = {r.row["replicas"] for r in runs}
    return ", ".join(parts + ([f"{replicas.pop()} replicas per run"] if len(replicas) == 1 else []))


def default_dir(name: str, quick: bool) -> Path:
    """multirun/figures/<name>[_quick] (git-ignored)."""
    return PROJECT_ROOT / "multirun" / "figures" / (f"{name}_quick" if quick else name)


def diagram_setup(name: str, quick: bool, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], Setup]:
    """The grid (``d`` and ``scan``, a list of ``kappa`` × ``delta`` rectangles, as LIST
    strings) and the :class:`Setup` of a
    diagram preset: ``conf/experiment/<name>.yaml``'s ``diagram`` block (its ``quick``
    entries with ``quick``) and physics; a ``replicas=`` override wins over both."""
    cfg = compose_config([f"experiment={name}", *overrides])
    block = dict(cfg.diagram)
    quick_block = dict(block.pop("quick", None) or {}) if quick else {}
    block.pop("quick", None)
    block |= quick_block
    user_replicas = any(o.split("=", 1)[0].lstrip("+") == "replicas" for o in overrides)
    replicas = int(cfg.replicas) if user_replicas or "replicas" not in block else int(block["replicas"])
    setup = Setup(
        k=int(cfg.teacher.width),
        p0=int(cfg.student.width),
        gamma0=float(cfg.lr.gamma0),
        noise=float(cfg.teacher.noise),
        activation=str(cfg.activation.name),
        replicas=replicas,
        seed=int(cfg.seed),
    )
    scan = [dict(r) for r in block["scan"]] if block.get("scan") else [{"kappa": block["kappa"], "delta": block["delta"]}]
    return {"d": str(block["d"]), "scan": [{k: str(v) for k, v in r.items()} for r in scan]}, setup


def diagram_title(name: str, setup: Setup, ds: Sequence[int], mode: str, quick: bool) -> str:
    source = "finite-size ODE" if mode == "ode" else f"simulations, {setup.replicas} replicas"
    return (
        f"{PRESETS[name].title if name in PRESETS else name}{' (quick)' if quick else ''}: {source}\n"
        f"k = {setup.k}, p = round({setup.p0}·d^κ), γ = {setup.gamma0:g}·d^(−δ), Δ = {setup.noise:g}, "
        f"{setup.activation}, d ∈ {{{', '.join(map(str, ds))}}}"
    )


def reproduce_diagram(
    name: str,
    quick: bool,
    out: Path,
    overrides: Sequence[str] = (),
    grid: dict[str, str] | None = None,
    mode: str = "sgd",
    asymptotic: bool = False,
    device: str = "cpu",
) -> Path:
    """Measure a diagram preset (or read its traces back) into ``out``: ``phase_diagram.csv``
    and ``phase_diagram.png`` (``grid`` replaces the preset's LIST strings; ``asymptotic``
    adds the d → ∞ equations' risk as a column)."""
    lists, setup = diagram_setup(name, quick, overrides)
    if mode == "ode" and not any(o.split("=", 1)[0].lstrip("+") == "replicas" for o in overrides):
        setup = replace(setup, replicas=min(setup.replicas, ODE_INITIAL_CONDITIONS))
    grid = grid or {}
    if "kappa" in grid or "delta" in grid:
        first = lists["scan"][0]
        lists["scan"] = [{"kappa": grid.get("kappa", first["kappa"]), "delta": grid.get("delta", first["delta"])}]
    ds = parse_dimensions(grid.get("d", lists["d"]))
    rectangles = [(parse_list(r["kappa"], "--kappa"), parse_list(r["delta"], "--delta")) for r in lists["scan"]]
    cells = [cell for kappas, deltas in rectangles for cell in measure_diagram(kappas, deltas, ds, out, setup, mode=mode, device=device)]
    rows = write_diagram(cells, out / "phase_diagram.csv", asymptotic)
    png = out / "phase_diagram.png"
    boundary = boundary_rows(cells) if name == "no_ode_boundary" and mode == "sgd" else []
    draw_diagram(rows, png, diagram_title(name, setup, ds, mode, quick), boundary)
    if boundary:
        write_csv(boundary, out / "no_ode_boundary.csv")
    return png


def reproduce(name: str, quick: bool = False, sweep_dir: str | os.PathLike | None = None, overrides: Sequence[str] = (), run: bool = True) -> Path:
    """Run (or, with ``run=False``, only read) the preset's sweep into ``sweep_dir`` and
    draw its figure there: ``<name>.png`` and ``<name>.csv`` (diagram presets:
    ``phase_diagram.png`` and ``phase_diagram.csv``). Returns the PNG's path."""
    if name not in PRESETS:
        raise ValueError(f"unknown figure {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    sweep_dir = Path(sweep_dir) if sweep_dir else default_dir(name, quick)
    if preset.kind == "diagram":
        return reproduce_diagram(name, quick, sweep_dir, overrides)
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
    runs = [Run(dict(o.split("=", 1) for o in job), read_row(folder), dict(np.load(folder / "results.npz"))) for job, folder in found]
    rows = draw_curves(preset, runs, png, f"{title}\n{shared_parameters(runs)}")
    write_csv(rows, sweep_dir / f"{name}.csv")
    return png
