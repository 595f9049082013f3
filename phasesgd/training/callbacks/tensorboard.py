"""TensorBoard logging of a run: scalars against log time and against the SGD step,
permutation-aware summaries of Q and M, heat maps of Q and M (simulation and ODE side by
side), the physics as hyper-parameters, and a custom-scalars layout.

**Log time.** Measurements are log-spaced in t, and TensorBoard has no logarithmic x axis,
so every scalar is written twice: against the SGD step ν under ``sgd_step/<tag>``, and
against the integer "log-time step" s = round(1000·log10(t/t0)), t0 = ``measure.t_min``/10,
under ``<n>_<group>/<name>`` (e.g. ``1_risk/mean``): each decade of t spans 1000 steps, so
the charts show every decade evenly (default t_min = 0.01: s = 3000 is t = 1, 5000 is
t = 100), and t = 0 is drawn at s = 0. The group number orders the charts: risk first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from ...infra.statistics import mean_and_error
from ...infra.validation import require_at_least
from ...viz.plotting import OverlapHeatmaps, alignment_order
from ..module import OnlineSGD

STEPS_PER_DECADE = 1000
# Scalar groups in the order their charts should appear (TensorBoard sorts by name).
GROUPS = ("risk", "specialisation", "Q", "M", "lr", "time")
LOG_TIME_GROUPS = {group: f"{i}_{group}" for i, group in enumerate(GROUPS, 1)}
HPARAM_METRICS = ("hp/risk_final", "hp/risk_final_se")


def tensorboard(trainer: L.Trainer) -> SummaryWriter | None:
    """The SummaryWriter of the trainer's TensorBoardLogger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def ode_log_dir(writer: SummaryWriter) -> Path:
    """The sibling run ``<logger dir>/../ode`` that holds the ODE prediction."""
    return Path(writer.log_dir).parent / "ode"


def log_time_step(t: float, t_min: float) -> int:
    """s = round(1000·log10(t/t0)) with t0 = t_min/10, so t = t_min is s = 1000; t ≤ t0 is s = 0."""
    return max(0, round(STEPS_PER_DECADE * math.log10(10.0 * t / t_min))) if t > 0 else 0


class TimeAxes:
    """Writes each scalar against log time (``<n>_<group>/<name>``) and against the SGD
    step (``sgd_step/<group>/<name>``); see the module docstring."""

    def __init__(self, writer: SummaryWriter, t_min: float) -> None:
        self.writer, self.t_min = writer, t_min

    def add(self, tag: str, value: float, step: int, t: float) -> None:
        group, _, name = tag.partition("/")
        self.writer.add_scalar(f"{LOG_TIME_GROUPS[group]}/{name}", float(value), log_time_step(t, self.t_min))
        self.writer.add_scalar(f"sgd_step/{tag}", float(value), int(step))


def spread(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices out of range(count), evenly spread, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int))


def overlap_scalars(Q: np.ndarray, M: np.ndarray, max_matrix_entries: int, max_units: int) -> dict[str, float]:
    """Scalars of R replicas' Q (R, p, p) and M (R, p, k), each a replica mean:

    - permutation-aware (they do not depend on how each replica numbers its units):
      ``specialisation/teacher_r`` = max_j M_jr, how well teacher unit r is learned;
      ``specialisation/student_rank_i`` = the i-th largest of max_r M_jr over units j;
      ``Q/diag_mean``, ``Q/offdiag_mean`` = mean of Q_jj and of Q_jl (j ≠ l);
    - entries: ``Q/diag_j`` and ``M/j_r`` when p·k ≤ ``max_matrix_entries`` (their replica
      mean washes out specialisation under different permutations: read them per replica
      or through the summaries above).
    """
    R, p, k = M.shape
    values: dict[str, float] = {}
    best_student = M.max(1).mean(0)  # (k,)
    for r in spread(k, max_units):
        values[f"specialisation/teacher_{r}"] = best_student[r]
    ranked = -np.sort(-M.max(2), axis=1).mean(0)  # (p,), largest first
    for i in spread(p, max_units):
        values[f"specialisation/student_rank_{i}"] = ranked[i]
    diag = np.diagonal(Q, axis1=1, axis2=2)
    values["Q/diag_mean"] = diag.mean()
    if p > 1:
        values["Q/offdiag_mean"] = ((Q.sum((1, 2)) - diag.sum(1)) / (p * (p - 1))).mean()
    if p * k <= max_matrix_entries:
        Qm, Mm = Q.mean(0), M.mean(0)
        for j in range(p):
            values[f"Q/diag_{j}"] = Qm[j, j]
            for r in range(k):
                values[f"M/{j}_{r}"] = Mm[j, r]
    return values


@dataclass(frozen=True)
class ScalarLimits:
    """How much of a measurement goes to TensorBoard: at most ``replica_curves`` replicas'
    risk curves, the entries of Q and M while p·k ≤ ``matrix_entries``, and at most
    ``units`` specialisation curves per kind."""

    replica_curves: int = 16
    matrix_entries: int = 64
    units: int = 16

    @classmethod
    def checked(
        cls, prefix: str, max_replica_curves: object, max_matrix_entries: object, max_units: object
    ) -> ScalarLimits:
        """The limits from a callback's config keys ``<prefix>.max_replica_curves`` etc., each
        an integer >= 0 (0: none of them logged)."""
        for name, value in (
            ("max_replica_curves", max_replica_curves),
            ("max_matrix_entries", max_matrix_entries),
            ("max_units", max_units),
        ):
            require_at_least(f"{prefix}.{name}", value, 0)
        return cls(int(max_replica_curves), int(max_matrix_entries), int(max_units))


def write_measurement(
    axes: TimeAxes,
    step: int,
    t: float,
    risk: np.ndarray,
    overlaps: tuple[np.ndarray, np.ndarray] | None,
    limits: ScalarLimits,
) -> None:
    """Scalars of one measurement of R replicas at SGD step ``step``, time ``t``:
    ``risk/mean`` (± s.e.), ``risk/replica_XX``, and :func:`overlap_scalars` of ``overlaps``
    (Q, M). Simulation and ODE use the same tags so that they overlay."""
    mean, se = mean_and_error(risk[:, None])
    axes.add("risk/mean", mean[0], step, t)
    if risk.shape[0] > 1:
        axes.add("risk/mean_plus_se", mean[0] + se[0], step, t)
        axes.add("risk/mean_minus_se", mean[0] - se[0], step, t)
    for r in range(min(risk.shape[0], limits.replica_curves)):
        axes.add(f"risk/replica_{r:02d}", risk[r], step, t)
    if overlaps is not None:
        for tag, value in overlap_scalars(*overlaps, limits.matrix_entries, limits.units).items():
            axes.add(tag, value, step, t)


def write_band(axes: TimeAxes, step: int, t: float, mean: float, sd: float) -> None:
    """The ODE's predicted replica spread (docs/theory.md §8) as ``risk/mean_plus_sd`` and
    ``risk/mean_minus_sd``: drawn with ``risk/mean`` as a band in the Custom Scalars tab."""
    axes.add("risk/mean_plus_sd", mean + sd, step, t)
    axes.add("risk/mean_minus_sd", mean - sd, step, t)


def custom_layout(t_min: float) -> dict[str, Any]:
    """The Custom Scalars tab: simulation and ODE overlaid, log time first, risk first."""
    g = LOG_TIME_GROUPS
    axis = f"x: log-time step s = 1000·log10(t/{t_min / 10:g}), t = 0 at s = 0"
    return {
        f"against log time ({axis})": {
            "risk: replica mean ± s.e.": [
                "Margin",
                [f"{g['risk']}/mean", f"{g['risk']}/mean_minus_se", f"{g['risk']}/mean_plus_se"],
            ],
            "risk: replica mean (simulation and ODE)": ["Multiline", [f"{g['risk']}/mean$"]],
            "risk: ODE ± predicted sd of a replica (linear noise)": [
                "Margin",
                [f"{g['risk']}/mean", f"{g['risk']}/mean_minus_sd", f"{g['risk']}/mean_plus_sd"],
            ],
            "risk: replicas": ["Multiline", [rf"{g['risk']}/replica_.*"]],
            "specialisation: max_j M_jr per teacher unit r": ["Multiline", [rf"{g['specialisation']}/teacher_.*"]],
            "specialisation: sorted max_r M_jr per student unit": [
                "Multiline",
                [rf"{g['specialisation']}/student_rank_.*"],
            ],
            "Q: mean diagonal and off-diagonal": ["Multiline", [rf"{g['Q']}/(diag|offdiag)_mean"]],
        },
        "against the SGD step ν": {
            "risk: replica mean": ["Multiline", [r"sgd_step/risk/mean$"]],
            "specialisation per teacher unit": ["Multiline", [r"sgd_step/specialisation/teacher_.*"]],
        },
    }


def physics_hparams(module: OnlineSGD) -> dict[str, float | int | str]:
    """The run's physics (docs/theory.md §1, §5) and the values derived from it: the region,
    ϑ, τ = d^(1+ϑ), and the prefactors τγ/(pd) (drift, I3 terms) and τγ²/(p²d) (I4 and
    noise terms) of the finite-size ODE. ``activation`` is 'student/teacher' when they differ."""
    physics, scaling = module.physics(), module.scaling
    p, k, d, gamma0 = module.student.width, module.teacher.width, physics.d, physics.gamma0
    student, teacher = (getattr(a, "name", str(a)) for a in (physics.student_activation, physics.teacher_activation))
    return {
        "activation": student if student == teacher else f"{student}/{teacher}",
        "d": d,
        "delta": physics.delta,
        "gamma0": gamma0,
        "k": k,
        "kappa": physics.kappa,
        "noise": physics.noise,
        "p": p,
        "prefactor_drift": scaling.drift_prefactor(gamma0, p, d),
        "prefactor_noise": scaling.noise_prefactor(gamma0, p, d),
        "region": scaling.region.value,
        "tau": scaling.steps_per_unit_time(d),
        "theta": scaling.time_exponent,
    }


def write_hparams(writer: SummaryWriter, params: dict[str, Any]) -> None:
    """The HParams tab: ``params`` and the metrics of :data:`HPARAM_METRICS` (their values
    are written as scalars when the run ends)."""
    for summary in hparams(params, dict.fromkeys(HPARAM_METRICS, 0.0)):
        writer.file_writer.add_summary(summary)


# ----- heat maps ------------------------------------------------------------------------------


def overlap_sources(module: OnlineSGD) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Q (T, R, p, p) and M (T, R, p, k) at every measurement: 'simulation', and 'ODE'
    when the prediction has them (``module.prediction``). Empty when the run keeps no
    trajectories."""
    h = module.history
    if not h.has_trajectories:
        return {}
    sources = {"simulation": (np.stack(h.Q), np.stack(h.M))}
    ode = module.prediction
    if ode is not None and ode.Q is not None and ode.M is not None:
        sources["ODE"] = (ode.Q[: len(h)], ode.M[: len(h)])
    return sources


def frame_indices(times: np.ndarray, count: int) -> np.ndarray:
    """Indices of at most ``count`` measurements spread evenly in log t: t = 0, then the
    ones nearest log-spaced targets from the first positive time to the last."""
    positive = np.flatnonzero(times > 0)
    if count < 1 or positive.size == 0:
        return np.arange(min(count, times.size))
    targets = np.geomspace(times[positive[0]], times[-1], max(count - 1, 1))
    nearest = positive[np.abs(np.log(times[positive][:, None] / targets[None])).argmin(0)]
    return np.unique(np.concatenate([np.flatnonzero(times <= 0)[:1], nearest]))


def log_heatmaps(
    writer: SummaryWriter,
    module: OnlineSGD,
    shown: tuple[str, ...],
    sources: dict[str, tuple[np.ndarray, np.ndarray]],
    count: int,
    replicas: int,
) -> None:
    """Heat maps ``heatmaps/replica_XX`` at ``count`` log-spaced measurements: one row per
    source in ``shown`` (Q and M side by side), each replica's student units ordered by the
    teacher unit they align with at the end of the simulation (:func:`alignment_order`; the
    same order in every row and frame, so rows compare entry by entry), one colour scale
    ±max|entry| over all sources, times and shown replicas of the run."""
    shown = tuple(s for s in shown if s in sources)
    if not shown:
        return
    R = min(replicas, next(iter(sources.values()))[0].shape[1])
    limits = tuple(max(float(np.abs(arrays[i][:, :R]).max()) for arrays in sources.values()) or 1.0 for i in (0, 1))
    Q0, M0 = sources[shown[0]]
    figure = OverlapHeatmaps(shown, Q0.shape[-1], M0.shape[-1], limits)
    times, steps = module.times(), module.history.steps
    try:
        reference = sources.get("simulation", sources[shown[0]])[1]
        for r in range(R):
            order = alignment_order(reference[-1, r])
            for i in frame_indices(times, count):
                frames = [(sources[s][0][i, r], sources[s][1][i, r], order) for s in shown]
                title = (
                    f"replica {r}, t = {times[i]:.4g} (SGD step {steps[i]})\n"
                    "student units sorted by the teacher unit they align with at the end"
                )
                writer.add_image(f"heatmaps/replica_{r:02d}", figure.render(frames, title), steps[i], dataformats="HWC")
    finally:
        figure.close()


class OrderParameterLogger(L.Callback):
    """Writes every measurement to TensorBoard (:func:`write_measurement` on both time axes,
    plus ``lr/gamma`` and ``time/t``), the physics to the HParams tab (:func:`physics_hparams`)
    with the final risk and its s.e. as metrics, the custom-scalars layout, and, when the
    run ends, ``images`` frames of Q and M heat maps for the first ``image_replicas``
    replicas (:func:`log_heatmaps`): simulation and ODE side by side in this run, the ODE
    alone in the sibling run ``ode``. Drawing happens at the end, when the colour scale of
    the whole run is known, and costs a fixed number of frames.

    Place it after ``ODEPrediction`` in the callback list so that the ODE is in the heat maps.
    ``config_key`` is its key in the config (``callbacks.order_parameters``), named by a refused value.
    """

    # its place in the end-of-run sequence (phasesgd.training.callbacks): draws the heat maps, the prediction's included
    stage = 2

    def __init__(
        self,
        max_replica_curves: int = 16,
        max_matrix_entries: int = 64,
        max_units: int = 16,
        images: int = 6,
        image_replicas: int = 1,
        *,
        config_key: str = "callbacks.order_parameters",
    ) -> None:
        self.limits = ScalarLimits.checked(config_key, max_replica_curves, max_matrix_entries, max_units)
        require_at_least(f"{config_key}.images", images, 0)
        require_at_least(f"{config_key}.image_replicas", image_replicas, 0)
        self.images, self.image_replicas = int(images), int(image_replicas)
        self._logged = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        writer = tensorboard(trainer)
        if writer is None:
            return
        self._logged = 0
        write_hparams(writer, physics_hparams(pl_module))
        writer.add_custom_scalars(custom_layout(pl_module.measure.t_min))
        self._log_new(writer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: OnlineSGD, *args: Any) -> None:
        writer = tensorboard(trainer)
        if writer is not None:
            self._log_new(writer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        writer = tensorboard(trainer)
        if writer is None or not pl_module.history.risk:
            return
        mean, se = mean_and_error(pl_module.history.risk[-1][:, None])
        for tag, value in zip(HPARAM_METRICS, (mean[0], se[0])):
            writer.add_scalar(tag, float(value), pl_module.sgd_steps)
        sources = overlap_sources(pl_module)
        log_heatmaps(writer, pl_module, ("simulation", "ODE"), sources, self.images, self.image_replicas)
        if "ODE" in sources:
            with SummaryWriter(log_dir=str(ode_log_dir(writer))) as ode_writer:
                log_heatmaps(ode_writer, pl_module, ("ODE",), sources, self.images, self.image_replicas)
        writer.flush()

    def _log_new(self, writer: SummaryWriter, module: OnlineSGD) -> None:
        h = module.history
        axes = TimeAxes(writer, module.measure.t_min)
        full = len(h.Q) == len(h)  # trajectories kept
        for i in range(self._logged, len(h)):
            step = h.steps[i]
            t = step / module.steps_per_unit
            write_measurement(axes, step, t, h.risk[i], (h.Q[i], h.M[i]) if full else None, self.limits)
            axes.add("lr/gamma", h.lr[i], step, t)
            axes.add("time/t", t, step, t)
        self._logged = len(h)
