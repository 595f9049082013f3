"""The paper's figures as presets: what each figure groups, which ODE goes over it, and its
CPU-sized version.

A preset named N is the experiment ``conf/experiment/N.yaml``: its physics and, in
``hydra.sweeper.params``, the grid of runs — so ``scripts/train.py -m experiment=N`` runs
exactly the figure's runs (locally, or on a cluster with ``hydra/launcher=slurm``). A preset
adds how the runs are grouped (one panel per value of ``panels``, one curve per value of
``curves``; seeds and replica offsets of the same point are pooled), which ODE goes over
them, and the scaled-down ``quick`` overrides. :func:`phasesgd.experiments.figures.reproduce`
makes the figure of a curve preset; the diagram presets (``kind='diagram'``) are measured by
:mod:`phasesgd.experiments.diagram.preset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..infra.paths import PROJECT_ROOT

# A sweep key's symbol in labels and titles.
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


QUICK = ("t_max=1000", "replicas=4")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "blue_line_noise",
            "blue line κ = δ = 0 (k = 4, p = 8, γ0 = 8): plateau ∝ Δ",
            curves="teacher.noise",
            quick=("d=100", *QUICK),
        ),
        Preset(
            "blue_line_d",
            "blue line κ = δ = 0, Δ = 10⁻³: simulations approach the ODE as d grows",
            curves="d",
            ode_per_panel=True,
            quick=("d=30,100,300", *QUICK),
        ),
        Preset(
            "green_region",
            "green region κ = 0 (perfect learning), Δ = 10⁻²: noise floor falls with d",
            curves="d",
            panels="lr.delta",
            ode_per_panel=True,
            quick=("d=20,50", *QUICK),
        ),
        Preset(
            "lr_family",
            "γ = γ0 d^−δ at κ = 0, all on t = ν/d (ϑ = 0), Δ = 10⁻³; lines: finite-d ODE",
            curves="lr.delta",
            ode="finite",
            quick=("d=100", *QUICK),
        ),
        Preset(
            "orange_region",
            "orange region κ = 0, δ = −3/8 (bad learning): risk rises, d → ∞ slowly",
            curves="d",
            ode_per_panel=True,
            quick=("t_max=300", "replicas=4"),
        ),
        Preset(
            "regions",
            "one curve per region, each on its own clock t = ν/d^(1+ϑ)",
            curves="point",
            quick=("d=50", "replicas=4"),
        ),
        Preset(
            "wide_students",
            "wide students p = d^κ (paper Fig. 8), each on t = ν/d^(1+ϑ)",
            curves="point",
            ode=None,
            quick=("d=16", *QUICK),
        ),
        Preset("phase_diagram", "measured phase diagram", kind="diagram"),
        Preset("no_ode_boundary", "where concentration is lost: δ across both candidate no-ODE lines", kind="diagram"),
    )
}


def default_dir(name: str, quick: bool) -> Path:
    """multirun/figures/<name>[_quick] (git-ignored)."""
    return PROJECT_ROOT / "multirun" / "figures" / (f"{name}_quick" if quick else name)
