"""The ODE prediction beside a simulation."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.tensorboard import SummaryWriter

from ..module import OnlineSGD
from ..ode import solve_ode
from .tensorboard import tensorboard, write_measurement

log = logging.getLogger(__name__)


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
        args = pl_module.physics().ode_arguments() | {"second_layer": a0}
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
