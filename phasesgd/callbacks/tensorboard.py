"""TensorBoard logging of the order parameters: scalars against the SGD step, heat maps
of Q and M, and the hyper-parameters."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from ..module import OnlineSGD
from ..plotting import heatmap_image, mean_and_error


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
