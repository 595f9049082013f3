"""The figure of a set of runs: one panel per value of one sweep key, in each one curve per
value of another (simulation markers, replica mean ± s.e., over ODE lines, log-log), and
the legend below the axes.

It is fed plain data — labels, times and risk arrays (:class:`Series` in :class:`Panel`) —
so which runs make a curve and where its ODE comes from stay with the caller
(:mod:`phasesgd.experiments.figures`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.lines import Line2D

from .plotting import LEGEND_FONT, plt, risk_axes, save_figure


@dataclass(frozen=True)
class Series:
    """One labelled curve on the times ``t`` (T,): the simulation's replicas ``risk`` (R, T)
    and the ODE's solutions ``ode`` (R', T, their mean is drawn); either may be None."""

    label: str
    t: np.ndarray
    risk: np.ndarray | None = None
    ode: np.ndarray | None = None


@dataclass(frozen=True)
class Panel:
    """One axes: its ``title``, the time axis' label ``clock``, one colour per curve of
    ``series``, and ``reference``, an ODE line drawn in black for the whole panel (or None)."""

    title: str
    clock: str
    series: Sequence[Series]
    reference: Series | None = None


def draw_curves(panels: Sequence[Panel], path: str | os.PathLike, title: str, ode_lines: str | None = None) -> None:
    """Write the figure of ``panels`` side by side to ``path``. ``ode_lines`` names the ODE of
    the curves' own lines for the legend (e.g. 'asymptotic'; None: the curves have none)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 5.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, series in enumerate(panel.series):
            risk_axes(ax, series.t, series.risk, series.ode, label=series.label, color=f"C{i}")
        reference = None
        if panel.reference is not None and panel.reference.ode is not None:
            keep = panel.reference.t > 0
            mean = np.atleast_2d(panel.reference.ode).mean(0)
            (reference,) = ax.plot(panel.reference.t[keep], mean[keep], "k-", lw=1.5, label=panel.reference.label)
        ax.set_xlabel(panel.clock)
        ax.set_title(panel.title, fontsize=11)
        _legend(ax, panel, reference, ode_lines)
    fig.suptitle(title, fontsize=11, y=1.0 + 0.04 * title.count("\n"))
    save_figure(fig, path)


def _legend(ax: plt.Axes, panel: Panel, reference: Line2D | None, ode_lines: str | None) -> None:
    """Below the axes: one entry per curve (its colour, marker and line), the panel's ODE
    line, then what the marker and line styles mean."""
    line = "-" if ode_lines else ""
    handles = [Line2D([], [], color=f"C{i}", marker="o", ms=4, ls=line) for i in range(len(panel.series))]
    labels = [series.label for series in panel.series]
    if reference is not None:
        handles.append(reference)
        labels.append(reference.get_label())
    handles.append(Line2D([], [], color="grey", marker="o", ms=4, ls=""))
    labels.append("markers: simulation, replica mean ± s.e.")
    if ode_lines:
        handles.append(Line2D([], [], color="grey", ls="-", lw=1.5))
        labels.append(f"lines: {ode_lines} ODE")
    ax.legend(
        handles, labels, fontsize=LEGEND_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False
    )
