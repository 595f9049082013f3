"""The ODE prediction of a run, handed from the callback that solves it to those that show
and write it (TensorBoard, results.npz, risk.png): one typed record on the module."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """What the prediction came to: ``status`` ('solved: …', 'stopped: …', 'failed: …',
    'none: …', 'not solved: …') and, when solved, the ODE's risk (R, T), and Q (T, R, p, p)
    and M (T, R, p, k) when the run keeps trajectories, on the run's planned times."""

    status: str
    risk: np.ndarray | None = None
    Q: np.ndarray | None = None
    M: np.ndarray | None = None

    def arrays(self, measured: int) -> dict[str, np.ndarray]:
        """results.npz's ``ode_status``, ``risk_ode``, ``Q_ode`` and ``M_ode``, cut to the
        ``measured`` times (a run stopped early measured fewer than planned)."""
        arrays = {"ode_status": np.array(self.status)}
        if self.risk is not None:
            arrays["risk_ode"] = self.risk[:, :measured]
        if self.Q is not None and self.M is not None:
            arrays["Q_ode"], arrays["M_ode"] = self.Q[:measured], self.M[:measured]
        return arrays
