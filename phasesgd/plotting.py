"""Figures: risk against time on log-log axes, and heat maps of overlap matrices."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402


def mean_and_error(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replica mean and standard error along axis 0 (zero error for one replica)."""
    mean = values.mean(0)
    se = values.std(0, ddof=1) / np.sqrt(values.shape[0]) if values.shape[0] > 1 else np.zeros_like(mean)
    return mean, se


def risk_axes(ax: plt.Axes, t: np.ndarray, risk: np.ndarray | None, risk_ode: np.ndarray | None = None, label: str = "", color=None) -> None:
    """Simulation markers (replica mean ± s.e.) over an ODE line, log-log, t > 0 only;
    ``risk=None`` draws the ODE alone."""
    keep = t > 0
    line = None
    if risk_ode is not None:
        ode = np.atleast_2d(risk_ode).mean(0)
        (line,) = ax.plot(t[keep], ode[keep], "-", color=color, label=f"{label} ODE".strip())
        color = line.get_color()
    if risk is not None:
        mean, se = mean_and_error(risk)
        ax.errorbar(t[keep], mean[keep], yerr=se[keep], fmt="o", ms=3, color=color, alpha=0.8,
                    label=f"{label} simulation".strip() if line is not None or label else "simulation")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("population risk R")


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=os.path.splitext(str(path))[1][1:] or "png")
    plt.close(fig)


def plot_risk(path: str | os.PathLike, t: np.ndarray, risk: np.ndarray, risk_ode: np.ndarray | None = None,
              title: str = "", simulation: bool = True) -> None:
    """Write ``risk.png``: the replica-mean R(t) with error bars, and the ODE."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    risk_axes(ax, t, risk if simulation else None, risk_ode)
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def heatmap_image(matrix: np.ndarray, pixels_per_entry: int = 12) -> np.ndarray:
    """An RGB image (H, W, 3) uint8 of ``matrix`` in a diverging colour map symmetric
    about 0 (red > 0, blue < 0), for TensorBoard. Built without a figure: drawing one
    costs ~0.1 s, which would dominate a run's logging."""
    lim = float(np.abs(matrix).max()) or 1.0
    rgba = matplotlib.colormaps["RdBu_r"]((matrix / lim + 1.0) / 2.0)
    image = (255 * rgba[..., :3]).astype(np.uint8)
    return image.repeat(pixels_per_entry, 0).repeat(pixels_per_entry, 1)
