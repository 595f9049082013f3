"""Drawing the (δ, κ) phase diagram: measured cells over the theory's regions (docs/theory.md §5)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..theory.scaling import classify
from .plotting import plt, save_figure

COLOURS = {
    "perfect": "tab:green",
    "plateau": "tab:blue",
    "bad": "tab:orange",
    "no_ode": "tab:red",
    "not_measured": "lightgrey",
    "undecided": "white",
}
LABELS = {
    "perfect": "perfect learning",
    "plateau": "plateau",
    "bad": "bad learning",
    "no_ode": "no ODE",
    "not_measured": "not measured",
    "undecided": "undecided (a 95 % interval straddles a threshold)",
}
HATCH = {"undecided": "xxxx"}
BOUNDARY_LABEL = "measured boundary (c = 0, 95 % interval)"
REGIONS = ("perfect", "plateau", "bad", "no_ode")


def _spacing(values: Sequence[float]) -> float:
    steps = np.diff(np.unique(values))
    return float(steps.min()) if steps.size else 0.25


def draw_diagram(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str, boundary: Sequence[dict[str, Any]] = ()
) -> None:
    """``rows`` are ``phase_diagram.csv`` rows (kappa, delta, regime_theory, regime_observed):
    the theory's regions shaded, each cell a square coloured by its measured regime (a
    cross where it differs from the theory; hatched white: undecided), the plateau line κ = −δ and both candidate
    no-ODE lines: −δ = κ + ½ (docs/theory.md §5) and −δ = (κ+1)/2 (the published code's).
    ``boundary`` (rows of :func:`phasesgd.experiments.diagram.measure.boundary_rows`) adds the measured
    boundary: a diamond per κ with its 95 % interval (columns ``boundary``,
    ``boundary_ci95_low``, ``boundary_ci95_high``)."""
    deltas, kappas = [float(r["delta"]) for r in rows], [float(r["kappa"]) for r in rows]
    hx, hy = _spacing(deltas) / 2, _spacing(kappas) / 2
    x0, x1, y0, y1 = min(deltas) - hx, max(deltas) + hx, min(kappas) - hy, max(kappas) + hy
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    xs, ys = np.linspace(x0, x1, 241), np.linspace(y0, y1, 181)
    # κ < 0 has no width exponent: the half-cell margin below κ = 0 is shaded as κ = 0
    theory = np.array(
        [[REGIONS.index(classify(max(round(float(y), 6), 0.0), round(float(x), 6)).value) for x in xs] for y in ys]
    )
    cmap = ListedColormap([COLOURS[r] for r in REGIONS])
    ax.imshow(
        theory, origin="lower", extent=(x0, x1, y0, y1), cmap=cmap, vmin=-0.5, vmax=3.5, alpha=0.22, aspect="auto"
    )
    seen = set()
    for r in rows:
        x, y, observed = float(r["delta"]), float(r["kappa"]), r["regime_observed"]
        seen.add(observed)
        ax.add_patch(
            plt.Rectangle(
                (x - 0.55 * hx, y - 0.55 * hy),
                1.1 * hx,
                1.1 * hy,
                facecolor=COLOURS[observed],
                edgecolor="k",
                lw=0.6,
                hatch=HATCH.get(observed),
            )
        )
        if observed != r["regime_theory"] and observed not in ("not_measured", "undecided"):
            ax.plot(x, y, "kx", ms=9, mew=1.6)
    line = np.linspace(x0, x1, 2)
    ax.plot(line, -line, color="navy", lw=2)
    ax.plot(line, -line - 0.5, color="darkred", lw=2)
    ax.plot(line, -2 * line - 1, "k--", lw=1.5)
    measured = [b for b in boundary if math.isfinite(float(b["boundary"]))]
    for b in measured:
        x, lo, hi = (-float(b[key]) for key in ("boundary", "boundary_ci95_high", "boundary_ci95_low"))
        # an interval past the scan (±inf) is drawn to the frame; a missing one (NaN) not at all
        lo, hi = (x if math.isnan(v) else v for v in (max(lo, x0), min(hi, x1)))
        ax.errorbar(
            [x],
            [float(b["kappa"])],
            xerr=[[x - lo], [hi - x]],
            fmt="D",
            color="white",
            mec="k",
            ms=8,
            ecolor="k",
            capsize=4,
            zorder=5,
        )
    handles = [
        Patch(facecolor=COLOURS[r], edgecolor="k", hatch=HATCH.get(r), label=LABELS[r])
        for r in (*REGIONS, "undecided", "not_measured")
        if r in REGIONS or r in seen
    ]
    handles += [
        Line2D([], [], color="navy", lw=2, label="κ = −δ (plateau line)"),
        Line2D([], [], color="darkred", lw=2, label="−δ = κ + ½ (no-ODE line, theory §5)"),
        Line2D([], [], color="k", ls="--", lw=1.5, label="−δ = (κ+1)/2 (published code's line)"),
        Line2D([], [], color="k", marker="x", ls="", ms=9, mew=1.6, label="measured ≠ theory"),
    ]
    if measured:
        handles.append(Line2D([], [], color="white", mec="k", marker="D", ls="", ms=8, label=BOUNDARY_LABEL))
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=3,
        fontsize=9,
        title="squares: measured regime; shading: theory's region",
        title_fontsize=9,
        frameon=False,
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xticks(sorted(set(deltas)))
    ax.set_yticks(sorted(set(kappas)))
    ax.set_xticklabels([_fraction(x) for x in sorted(set(deltas))], fontsize=9)
    ax.set_yticklabels([_fraction(y) for y in sorted(set(kappas))], fontsize=9)
    ax.set_xlabel(r"$\delta$   (learning rate $\gamma = \gamma_0\, d^{-\delta}$)", fontsize=11)
    ax.set_ylabel(r"$\kappa$   (width $p = p_0\, d^{\kappa}$)", fontsize=11)
    ax.set_title(title, fontsize=11)
    save_figure(fig, path)


def _fraction(x: float) -> str:
    """A tick label: −3/4 for -0.75, 0 for 0."""
    f = Fraction(x).limit_denominator(16)
    return ("−" if f < 0 else "") + (str(abs(f)) if math.isfinite(x) else "")
