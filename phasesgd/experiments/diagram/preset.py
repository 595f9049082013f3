"""The diagram presets (``phase_diagram``, ``no_ode_boundary``): from the experiment's
composed config to a :class:`~.setup.Setup` and a :class:`Grid`, then measured (or read
back), written as ``phase_diagram.csv`` and drawn as ``phase_diagram.png``.

The grid is the experiment's ``diagram`` block (its ``quick`` entries for the CPU-sized
version): ``d``, and ``kappa`` × ``delta`` (or ``scan``, a list of such rectangles), each a
LIST string (values or ranges ``a:b:step`` with fractions, :func:`~.measure.parse_list`).
The simulations run on the config group ``engine`` (``engine=sgd|chain|auto`` as an override,
as for ``scripts/train.py``; 'auto' picks per (κ, δ, d)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from omegaconf import OmegaConf

from ...sgd.engines import ENGINES
from ...viz.diagram import draw_diagram
from ..presets import PRESETS
from ..sweeps import compose_config
from ..tables import write_csv
from .measure import (
    BOUNDARY_COLUMNS,
    Growth,
    boundary_rows,
    measure_diagram,
    parse_dimensions,
    parse_list,
    threshold_sensitivity,
    write_diagram,
)
from .setup import Setup

# The ODE is deterministic: a few initial conditions average its small-d dependence on the draw,
# and its cost grows with them (the I4 sum is O(p²(p+k)²) per initial condition).
ODE_INITIAL_CONDITIONS = 4


@dataclass(frozen=True)
class Grid:
    """Where a diagram is measured: the input dimensions ``d`` and ``scan``, rectangles of
    (κ LIST, δ LIST), all LIST strings as the config writes them; ``growth``: d grown per cell
    beyond ``d`` (the config's ``grow`` block with ``enabled: true``), or None."""

    d: str
    scan: tuple[tuple[str, str], ...]
    growth: Growth | None = None

    def dimensions(self) -> list[int]:
        return parse_dimensions(self.d)

    def plan(self) -> list[int] | tuple[list[int], Growth]:
        """What :func:`~.measure.measure_diagram` takes as ``ds``: the d values, with the growth."""
        return self.dimensions() if self.growth is None else (self.dimensions(), self.growth)

    def rectangles(self) -> list[tuple[list[Fraction], list[Fraction]]]:
        return [(parse_list(kappa, "--kappa"), parse_list(delta, "--delta")) for kappa, delta in self.scan]

    def overridden(self, lists: Mapping[str, str]) -> Grid:
        """The grid with the command line's ``kappa``, ``delta`` or ``d`` LIST in place of
        its own (a ``kappa`` or ``delta`` LIST turns a scan into one rectangle)."""
        scan = self.scan
        if "kappa" in lists or "delta" in lists:
            kappa, delta = scan[0]
            scan = ((lists.get("kappa", kappa), lists.get("delta", delta)),)
        return Grid(lists.get("d", self.d), scan, self.growth)


def _replicas_given(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+") == "replicas" for o in overrides)


def diagram_setup(name: str, quick: bool, overrides: Sequence[str] = ()) -> tuple[Grid, Setup]:
    """The :class:`Grid` and :class:`~.setup.Setup` of a diagram preset from
    ``conf/experiment/<name>.yaml`` composed with ``overrides``: the ``diagram`` block (its
    ``quick`` entries with ``quick``) and the physics; a ``replicas=`` override wins over both."""
    grid, setup, _ = _diagram_config(name, quick, overrides)
    return grid, setup


def _diagram_config(name: str, quick: bool, overrides: Sequence[str]) -> tuple[Grid, Setup, str]:
    """:func:`diagram_setup` and the composed ``engine.name`` ('sgd' where the config has none)."""
    cfg = compose_config([f"experiment={name}", *overrides])
    block = dict(cfg.diagram)
    quick_block = dict(block.pop("quick", None) or {})
    if quick:
        block |= quick_block
    replicas = int(cfg.replicas) if _replicas_given(overrides) or "replicas" not in block else int(block["replicas"])
    rectangles = block.get("scan") or [{"kappa": block["kappa"], "delta": block["delta"]}]
    grow = dict(block.get("grow") or {})
    growth = None
    if grow.pop("enabled", False):
        growth = Growth(float(grow["factor"]), int(grow["d_max"]), int(grow["steps"]))
    grid = Grid(str(block["d"]), tuple((str(r["kappa"]), str(r["delta"])) for r in rectangles), growth)
    engine = str(OmegaConf.select(cfg, "engine.name") or "sgd")
    if engine not in ENGINES:
        raise ValueError(f"engine.name: expected one of {', '.join(ENGINES)}, got {engine!r}")
    return grid, Setup.from_config(cfg, replicas=replicas), engine


def diagram_title(name: str, setup: Setup, ds: Sequence[int], source: str, quick: bool, engine: str = "sgd") -> str:
    """Two lines: the preset's title and source (with the engine of the simulations, where not
    SGD itself); the setup and the d values."""
    measured = "finite-size ODE" if source == "ode" else f"simulations, {setup.replicas} replicas"
    if source != "ode" and engine != "sgd":
        measured += f", engine {engine}"
    return (
        f"{PRESETS[name].title if name in PRESETS else name}{' (quick)' if quick else ''}: {measured}\n"
        f"k = {setup.k}, p = round({setup.p0}·d^κ), γ = {setup.gamma0:g}·d^(−δ), Δ = {setup.noise:g}, "
        f"{setup.activation}, " + _dimensions_text(ds)
    )


def _dimensions_text(ds: Sequence[int]) -> str:
    """'d ∈ {16, 36, 81, 169}', or for many (grown) d values their range and count."""
    if len(ds) <= 6:
        return f"d ∈ {{{', '.join(map(str, ds))}}}"
    return f"d from {ds[0]} to {ds[-1]} ({len(ds)} values over the cells)"


def reproduce_diagram(
    name: str,
    out: Path,
    quick: bool = False,
    overrides: Sequence[str] = (),
    lists: Mapping[str, str] | None = None,
    source: str = "sgd",
    asymptotic: bool = False,
    device: str = "cpu",
) -> Path:
    """Measure a diagram preset from ``source`` ('sgd' or 'ode'; or read its traces back)
    into ``out``: ``phase_diagram.csv``, ``threshold_sensitivity.csv`` (how the calls move
    with each threshold, :func:`~.measure.threshold_sensitivity`), ``phase_diagram.png`` and,
    for ``no_ode_boundary``, ``no_ode_boundary.csv`` (``lists`` replaces the
    preset's ``kappa``, ``delta`` or ``d`` LIST; ``asymptotic`` adds the d → ∞ equations'
    risk as a column). The simulations run on the override ``engine=`` (default sgd).
    Returns the PNG's path."""
    grid, setup, engine = _diagram_config(name, quick, overrides)
    if source == "ode" and not _replicas_given(overrides):
        setup = replace(setup, replicas=min(setup.replicas, ODE_INITIAL_CONDITIONS))
    grid = grid.overridden(lists or {})
    ds = grid.dimensions()
    cells = [
        cell
        for kappas, deltas in grid.rectangles()
        for cell in measure_diagram(
            kappas, deltas, grid.plan(), out, setup, source=engine if source == "sgd" else source, device=device
        )
    ]
    ds = sorted({d for cell in cells for d in cell.d_values})
    rows = write_diagram(cells, out / "phase_diagram.csv", asymptotic)
    write_csv(threshold_sensitivity(cells), out / "threshold_sensitivity.csv")
    png = out / "phase_diagram.png"
    boundary = boundary_rows(cells) if name == "no_ode_boundary" and source == "sgd" else []
    draw_diagram(rows, png, diagram_title(name, setup, ds, source, quick, engine), boundary)
    if boundary:
        write_csv(boundary, out / "no_ode_boundary.csv", BOUNDARY_COLUMNS)
    return png
