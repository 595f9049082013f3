"""Figures: risk against time on log-log axes with a title naming the run's parameters,
and heat maps of the overlap matrices Q and M for TensorBoard."""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..infra.io import atomic_path  # noqa: E402
from ..infra.statistics import mean_and_error  # noqa: E402
from ..theory.physics import RunPhysics  # noqa: E402
from ..theory.scaling import Region  # noqa: E402

LEGEND_FONT = 9  # pt

# What a region is (docs/theory.md §5), without claiming an outcome: at Δ = 0 the blue
# line's risk keeps falling, so "plateau" would mislabel it.
REGION_NAMES = {
    Region.PERFECT: "green region (κ+δ>0)",
    Region.PLATEAU: "blue line (κ+δ=0)",
    Region.BAD: "orange region (κ+δ<0)",
    Region.NO_ODE: "red region (no ODE)",
}


def risk_axes(
    ax: plt.Axes,
    t: np.ndarray,
    risk: np.ndarray | None,
    risk_ode: np.ndarray | None = None,
    label: str = "",
    color=None,
    ode_color=None,
    band: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Simulation markers (replica mean ± s.e.) over an ODE line, log-log, t > 0 only;
    ``risk=None`` draws the ODE alone. The ODE line takes ``ode_color`` if given, else
    ``color`` (else the next colour of the cycle, which the markers then share). ``band``:
    (sd, valid), the predicted sd of one replica, drawn as ODE ± sd where ``valid``."""
    keep = t > 0
    line = None
    if risk_ode is not None:
        ode = np.atleast_2d(risk_ode).mean(0)
        (line,) = ax.plot(t[keep], ode[keep], "-", color=ode_color or color, lw=1.8, label=f"{label} ODE".strip())
        color = color or (line.get_color() if ode_color is None else None)
        if band is not None:
            sd, valid = np.atleast_2d(band[0]).mean(0), np.asarray(band[1], dtype=bool)
            shown = keep & valid
            ax.fill_between(
                t[shown],
                np.clip(ode - sd, ode * 1e-3, None)[shown],
                (ode + sd)[shown],
                color=line.get_color(),
                alpha=0.2,
                lw=0,
                label="ODE ± predicted sd of a replica",
            )
            if (keep & ~valid).any():
                end = t[keep & ~valid][0]
                ax.axvline(end, color=line.get_color(), ls=":", lw=1, label="linear noise stops holding")
    if risk is not None:
        mean, se = mean_and_error(risk)
        ax.errorbar(
            t[keep],
            mean[keep],
            yerr=se[keep],
            fmt="o",
            ms=3.5,
            color=color,
            alpha=0.85,
            label=f"{label} simulation".strip() if line is not None or label else "simulation",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("population risk R")


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=os.path.splitext(str(path))[1][1:] or "png")
    plt.close(fig)


def _number(x: float) -> str:
    return f"{x:g}"


def clock_text(exponent: Fraction | float) -> str:
    """The clock t = ν/d^(1+ϑ) for ``exponent`` = 1 + ϑ: 't = ν/d', 't = ν/d^2', 't = ν/d^(5/4)'
    (a decimal for a float that is no simple fraction)."""
    if exponent == 1:
        return "t = ν/d"
    fraction = exponent if isinstance(exponent, Fraction) else Fraction(exponent).limit_denominator(64)
    if abs(float(fraction) - float(exponent)) > 1e-12:
        return f"t = ν/d^{_number(exponent)}"
    return f"t = ν/d^{fraction}" if fraction.denominator == 1 else f"t = ν/d^({fraction})"


def run_title(physics: RunPhysics, p: int, k: int) -> str:
    """'erf, k=4, p=8, d=1000, γ0=8, δ=0, κ=0, Δ=0.001' and, on a second line, the region's
    name and the clock t = ν/d^(1+ϑ) (docs/theory.md §5)."""
    student, teacher = (getattr(a, "name", a) for a in (physics.student_activation, physics.teacher_activation))
    activation = student if student == teacher else f"{student} student, {teacher} teacher"
    scaling = physics.scaling
    return (
        f"{activation}, k={k}, p={p}, d={physics.d}, γ0={_number(physics.gamma0)}, δ={_number(physics.delta)}, "
        f"κ={_number(physics.kappa)}, Δ={_number(physics.noise)}\n"
        f"{REGION_NAMES[scaling.region]}, {clock_text(1 + scaling.exact_time_exponent)}"
    )


def plot_risk(
    path: str | os.PathLike,
    t: np.ndarray,
    risk: np.ndarray,
    risk_ode: np.ndarray | None = None,
    title: str = "",
    simulation: bool = True,
    ode_label: str = "ODE",
    band: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write ``risk.png``: the replica-mean R(t) with error bars (blue markers) and the
    ODE (orange line) with the predicted replica spread ``band`` (see :func:`risk_axes`), the
    legend inside the axes."""
    fig, ax = plt.subplots(figsize=(6, 4.4))
    risk_axes(ax, t, risk if simulation else None, risk_ode, color="C0", ode_color="C1", band=band)
    handles, labels = ax.get_legend_handles_labels()
    labels = [
        ode_label if lab == "ODE" else "simulation (replica mean ± s.e.)" if lab == "simulation" else lab
        for lab in labels
    ]
    ax.legend(handles, labels, fontsize=LEGEND_FONT, loc="best", framealpha=0.9)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


# ----- heat maps of Q and M -------------------------------------------------------------------


def alignment_order(M: np.ndarray) -> np.ndarray:
    """Student units of one replica ordered by the teacher unit each aligns with
    (argmax_r M_jr), the strongest first among units of the same teacher: Q and M
    reordered by it show specialisation as a (block) diagonal."""
    return np.lexsort((-M.max(-1), M.argmax(-1)))


class OverlapHeatmaps:
    """One reusable figure of Q (p × p) and M (p × k) heat maps, one row per source
    (e.g. simulation and ODE), with a fixed colour scale ±``limits`` and colour bars.

    A new figure is a full render; a frame of this one redraws only its images and title,
    so a run draws its few frames through one instance.
    """

    def __init__(self, sources: Sequence[str], p: int, k: int, limits: tuple[float, float]) -> None:
        height = 0.6 + 2.9 * len(sources)  # inches: a row of heat maps, and room for a two-line title
        self.fig, axes = plt.subplots(
            len(sources), 2, figsize=(7.2, height), squeeze=False, gridspec_kw={"width_ratios": [p, max(k, 2, p / 3)]}
        )
        self.images = []
        for row, source in zip(axes, sources):
            images = []
            for ax, shape, limit, name, xlabel in zip(
                row, ((p, p), (p, k)), limits, ("Q", "M"), ("student j (sorted)", "teacher r")
            ):
                aspect = "equal" if shape[0] <= 3 * shape[1] else "auto"  # a tall M (p ≫ k) would be a sliver
                image = ax.imshow(
                    np.zeros(shape), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", aspect=aspect
                )
                ax.set_title(f"{name} ({source})", fontsize=10)
                ax.set_xlabel(xlabel, fontsize=9)
                ax.set_ylabel("student j (sorted)", fontsize=9)
                ax.set_xticks(range(shape[1]) if shape[1] <= 16 else [])
                ax.set_yticks(range(shape[0]) if shape[0] <= 16 else [])
                ax.tick_params(labelsize=7)
                self.fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
                images.append(image)
            self.images.append(images)
        self.title = self.fig.suptitle("", fontsize=10, y=1 - 0.08 / height)
        # Fixed margins in inches (tight_layout would cost another full draw).
        self.fig.subplots_adjust(
            left=0.1, right=0.93, bottom=0.45 / height, top=1 - 0.85 / height, wspace=0.45, hspace=0.4
        )
        # Blitting: axes, labels and colour bars are drawn once; a frame redraws the images
        # and the title only.
        for artist in (self.title, *(image for row in self.images for image in row)):
            artist.set_animated(True)
        self.fig.canvas.draw()
        self.background = self.fig.canvas.copy_from_bbox(self.fig.bbox)

    def render(self, frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], title: str) -> np.ndarray:
        """RGB image (H, W, 3) of one (Q, M, student order) per source row."""
        canvas = self.fig.canvas
        canvas.restore_region(self.background)
        for images, (Q, M, order) in zip(self.images, frames):
            images[0].set_data(Q[np.ix_(order, order)])
            images[1].set_data(M[order])
            for image in images:
                image.axes.draw_artist(image)
        self.title.set_text(title)
        self.fig.draw_artist(self.title)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    def close(self) -> None:
        plt.close(self.fig)
