"""Lightning callbacks: TensorBoard logging of the order parameters, results files and
atomic checkpoints. All of them read the module's own SGD-step counter and history:
under manual optimisation Lightning's ``global_step`` does not count SGD steps.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from .io import atomic_path, save_npz, write_text
from .module import DivergenceError, OnlineSGD
from .ode import run_arguments, solve_ode
from .plotting import heatmap_image, mean_and_error, plot_risk
from .summary import summary_row

log = logging.getLogger(__name__)


def tensorboard(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}, lists and None as strings (TensorBoard hparams)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def write_measurement(
    writer, step: int, risk: np.ndarray, Q: np.ndarray | None, M: np.ndarray | None,
    max_replica_curves: int = 16, max_matrix_entries: int = 64,
) -> None:
    """Scalars of one measurement (R replicas) at SGD step ``step``: ``risk/mean`` (and
    ± s.e.), ``risk/replica_XX``, and replica means ``Q/diag_j``, ``M/j_r`` — or summaries
    ``Q/diag_mean``, ``Q/offdiag_abs``, ``M/max_abs``, ``M/mean_abs`` when p·k exceeds
    ``max_matrix_entries``. Simulation and ODE use the same tags so that they overlay."""
    mean, se = mean_and_error(risk[:, None])
    writer.add_scalar("risk/mean", mean[0], step)
    if risk.shape[0] > 1:
        writer.add_scalar("risk/mean_plus_se", mean[0] + se[0], step)
        writer.add_scalar("risk/mean_minus_se", mean[0] - se[0], step)
    for r in range(min(risk.shape[0], max_replica_curves)):
        writer.add_scalar(f"risk/replica_{r:02d}", risk[r], step)
    if Q is None or M is None:
        return
    Qm, Mm = Q.mean(0), M.mean(0)
    p, k = Mm.shape
    if p * k <= max_matrix_entries:
        for j in range(p):
            writer.add_scalar(f"Q/diag_{j}", Qm[j, j], step)
            for r in range(k):
                writer.add_scalar(f"M/{j}_{r}", Mm[j, r], step)
    else:
        writer.add_scalar("Q/diag_mean", np.diag(Qm).mean(), step)
        writer.add_scalar("Q/offdiag_abs", np.abs(Qm - np.diag(np.diag(Qm))).sum() / max(p * (p - 1), 1), step)
        writer.add_scalar("M/max_abs", np.abs(Mm).max(), step)
        writer.add_scalar("M/mean_abs", np.abs(Mm).mean(), step)


class OrderParameterLogger(L.Callback):
    """Writes every measurement to TensorBoard against the SGD step ν
    (:func:`write_measurement`, plus ``time/t`` and ``lr/gamma``), heat maps of Q and M
    of replica 0 (colour scale ± max |entry|) every ``image_every`` measurements, and the
    hyper-parameters to the hparams tab at the start.
    """

    def __init__(self, max_replica_curves: int = 16, max_matrix_entries: int = 64, image_every: int = 5) -> None:
        self.max_replica_curves = max_replica_curves
        self.max_matrix_entries = max_matrix_entries
        self.image_every = image_every
        self._logged = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        writer = tensorboard(trainer)
        if writer is None:
            return
        self._logged = 0
        metrics = {"hp/risk_final": float("nan")}
        for logger in trainer.loggers:
            logger.log_hyperparams(flatten(pl_module.run_config), metrics if isinstance(logger, TensorBoardLogger) else None)
        self._log_new(writer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: OnlineSGD, *args: Any) -> None:
        writer = tensorboard(trainer)
        if writer is not None:
            self._log_new(writer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        writer = tensorboard(trainer)
        if writer is not None and pl_module.history.risk:
            writer.add_scalar("hp/risk_final", float(pl_module.history.risk[-1].mean()), pl_module.sgd_steps)
            writer.flush()

    def _log_new(self, writer, module: OnlineSGD) -> None:
        h = module.history
        full = len(h.Q) == len(h)  # trajectories kept
        for i in range(self._logged, len(h)):
            step = h.steps[i]
            Q, M = (h.Q[i], h.M[i]) if full else (None, None)
            write_measurement(writer, step, h.risk[i], Q, M, self.max_replica_curves, self.max_matrix_entries)
            writer.add_scalar("time/t", step / module.steps_per_unit, step)
            writer.add_scalar("lr/gamma", h.lr[i], step)
            if full and (i % self.image_every == 0 or i == len(h) - 1):
                writer.add_image("overlaps/Q", heatmap_image(Q[0]), step, dataformats="HWC")
                writer.add_image("overlaps/M", heatmap_image(M[0]), step, dataformats="HWC")
        self._logged = len(h)


class ResultsWriter(L.Callback):
    """Writes ``results.npz``, ``config.yaml``, ``summary.json`` (one tidy row, see
    :mod:`phasesgd.summary`) and ``risk.png`` into ``output_dir`` when
    the run ends — also when it stops on an error, so a diverged run keeps its history.

    ``results.npz``: t (T,), steps (T,), lr (T,), risk (R, T), Q0 (R, p, p), M0 (R, p, k),
    P (k, k), Q, M (final), a0, a (second layers), Q_t (T, R, p, p) and M_t (T, R, p, k)
    when trajectories are kept, ``config`` (the resolved YAML), ``status`` ('finished' or
    the error), plus whatever other callbacks put in ``module.extra_results``.
    """

    def __init__(self, output_dir: str = ".", plot: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.plot = plot

    def on_train_end(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        self.write(pl_module, "finished")

    def on_exception(self, trainer: L.Trainer, pl_module: OnlineSGD, exception: BaseException) -> None:
        if pl_module.history.steps:
            self.write(pl_module, f"{type(exception).__name__}: {exception}")

    def write(self, module: OnlineSGD, status: str) -> Path:
        results = collect_results(module)
        results["status"] = np.array(status)
        config_text = yaml.safe_dump(module.run_config, sort_keys=False)
        results["config"] = np.array(config_text)
        path = self.output_dir / "results.npz"
        save_npz(path, **results)
        write_text(self.output_dir / "config.yaml", config_text)
        row = summary_row(module.run_config, results["risk"], status, module.scaling.region.value,
                          module.student.width, module.teacher.width)
        write_text(self.output_dir / "summary.json", json.dumps(row, indent=1) + "\n")
        if self.plot and results["t"].size > 1:
            region = module.scaling.region.value
            plot_risk(self.output_dir / "risk.png", results["t"], results["risk"], results.get("risk_ode"),
                      title=f"{region}, d={module.dim}, t = ν/d^{1 + module.scaling.time_exponent:g}")
        return path


def collect_results(module: OnlineSGD) -> dict[str, np.ndarray]:
    """The arrays of ``results.npz`` from a module's history."""
    h = module.history
    P = module.overlaps().P.double().cpu().numpy()
    results = {
        "t": module.times(),
        "steps": np.asarray(h.steps, dtype=np.int64),
        "lr": np.asarray(h.lr),
        "risk": np.stack(h.risk, axis=1),
        "Q0": h.Q[0], "M0": h.M[0], "a0": h.a[0],
        "Q": h.Q[-1], "M": h.M[-1], "a": h.a[-1],
        "P": P,
    }
    if len(h.Q) == len(h):
        results["Q_t"], results["M_t"] = np.stack(h.Q), np.stack(h.M)
    # Arrays of other callbacks cover the planned times; a run stopped early measured fewer.
    T = len(h)
    for key, value in module.extra_results.items():
        results[key] = value[:, :T] if key == "risk_ode" else value[:T] if key.endswith("_ode") else value
    return results


class SGDCheckpoint(L.Callback):
    """Saves ``last.ckpt`` in ``dirpath`` every ``every_minutes`` of wall time, at the end
    of the run and when it is interrupted, written atomically (tmp file, then rename).

    Lightning's ModelCheckpoint counts optimizer steps, which stay at zero under this
    module's manual SGD, and writes in place; resuming (``resume=<path>``) continues the
    exact trajectory since the module checkpoints its step counter and data generators.
    """

    def __init__(self, dirpath: str = "checkpoints", every_minutes: float = 10.0) -> None:
        self.dirpath = Path(dirpath)
        self.every_seconds = 60.0 * every_minutes
        self._last = time.monotonic()

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: L.Trainer) -> None:
        with atomic_path(self.last_path) as tmp:
            trainer.save_checkpoint(tmp)
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if time.monotonic() - self._last >= self.every_seconds:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: OnlineSGD, exception: BaseException) -> None:
        if not isinstance(exception, DivergenceError):  # a diverged state is not worth resuming
            self.save(trainer)


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar over the run's chunks of SGD steps, showing t and the
    replica-mean risk (the data loader has no length, so the total comes from the module)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        done, total = pl_module.chunk_progress()
        self.train_progress_bar.reset(total=total)
        self.train_progress_bar.update(done)
        self.train_progress_bar.set_description("SGD")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class ODEPrediction(L.Callback):
    """The deterministic prediction beside every simulation (THEORY §4–§5).

    At the start of the run it solves the order-parameter ODE from each replica's own
    initial (Q0, M0, P) — all replicas in one batched solve — or, with
    ``per_replica=False``, once from their mean, on the run's measurement times. It then

    - logs the prediction to a sibling TensorBoard run ``<logger dir>/../ode`` under the
      simulation's tags (:func:`write_measurement`), with a custom-scalars layout that
      overlays the two, and
    - puts ``risk_ode`` (R, T) and, when trajectories are kept, ``Q_ode`` (T, R, p, p) and
      ``M_ode`` (T, R, p, k) into ``results.npz`` (``risk.png`` then draws the ODE lines).

    ``mode='finite'`` is the finite-size ODE at the run's γ, p, d; 'asymptotic' its d → ∞
    limit. No ODE exists in the no-ODE region: the callback then says so and does nothing.
    A failed solve is reported as a warning; the simulation goes on.
    """

    def __init__(self, mode: str = "finite", method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-9,
                 per_replica: bool = True, max_replica_curves: int = 16, max_matrix_entries: int = 64) -> None:
        self.mode, self.method, self.rtol, self.atol = mode, method, rtol, atol
        self.per_replica = per_replica
        self.max_replica_curves, self.max_matrix_entries = max_replica_curves, max_matrix_entries

    def on_train_start(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        if not pl_module.scaling.region.has_ode:
            log.warning("no ODE prediction: (kappa, delta) lies in the no-ODE region")
            return
        h = pl_module.history
        Q0, M0, a0 = h.Q[0], h.M[0], h.a[0]
        if not self.per_replica:
            Q0, M0, a0 = Q0.mean(0, keepdims=True), M0.mean(0, keepdims=True), a0.mean(0, keepdims=True)
        P = pl_module.overlaps().P.double().cpu().numpy()
        t_eval = pl_module.measure_steps / pl_module.steps_per_unit
        args = run_arguments(pl_module) | {"second_layer": a0}
        try:
            sol = solve_ode(Q0, M0, P, t_eval=t_eval, mode=self.mode, method=self.method, rtol=self.rtol, atol=self.atol, **args)
        except (ValueError, RuntimeError) as err:
            log.warning("the ODE prediction failed: %s", err)
            return
        R = pl_module.student.replicas
        risk = np.broadcast_to(sol.risk, (R, t_eval.size)).copy()
        pl_module.extra_results["risk_ode"] = risk
        if pl_module.measure.keep_trajectories:
            pl_module.extra_results["Q_ode"] = np.broadcast_to(sol.Q.swapaxes(0, 1), (t_eval.size, R, *sol.Q.shape[-2:])).copy()
            pl_module.extra_results["M_ode"] = np.broadcast_to(sol.M.swapaxes(0, 1), (t_eval.size, R, *sol.M.shape[-2:])).copy()
        self._log(trainer, pl_module.measure_steps, risk, sol.Q, sol.M)

    def _log(self, trainer: L.Trainer, steps: np.ndarray, risk: np.ndarray, Q: np.ndarray, M: np.ndarray) -> None:
        sim = tensorboard(trainer)
        if sim is None:
            return
        writer = SummaryWriter(log_dir=str(Path(sim.log_dir).parent / "ode"))
        for i, step in enumerate(steps):
            write_measurement(writer, int(step), risk[:, i], Q[:, i], M[:, i], self.max_replica_curves, self.max_matrix_entries)
        writer.close()
        sim.add_custom_scalars({
            "simulation vs ODE": {
                "risk (replica mean)": ["Multiline", ["risk/mean"]],
                "risk (replicas)": ["Multiline", [r"risk/replica_.*"]],
                "Q diagonal": ["Multiline", [r"Q/diag_.*"]],
                "M": ["Multiline", [r"M/.*"]],
            }
        })
