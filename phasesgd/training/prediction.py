"""The ODE prediction of a run, handed from the callback that solves it to those that show
and write it (TensorBoard, results.npz, risk.png): one typed record on the module."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Band:
    """The predicted spread of one replica (docs/theory.md §8) on the run's planned times:
    ``risk`` (R, T), ``Q`` (T, R, p, p) and ``M`` (T, R, p, k) (None unless the run keeps
    trajectories) around each replica's own ODE, from the SGD noise alone; ``risk_total``
    (R, T) over replicas, their initial spread included; ``valid`` (T,) where the linear-noise
    approximation holds."""

    risk: np.ndarray
    risk_total: np.ndarray
    valid: np.ndarray
    Q: np.ndarray | None = None
    M: np.ndarray | None = None


@dataclass(frozen=True)
class Prediction:
    """What the prediction came to: ``status`` ('solved: …', 'stopped: …', 'failed: …',
    'none: …', 'not solved: …') and, when solved, the ODE's risk (R, T), and Q (T, R, p, p)
    and M (T, R, p, k) when the run keeps trajectories, on the run's planned times; ``band``
    the predicted spread when it was solved too."""

    status: str
    risk: np.ndarray | None = None
    Q: np.ndarray | None = None
    M: np.ndarray | None = None
    band: Band | None = None

    def arrays(self, measured: int) -> dict[str, np.ndarray]:
        """results.npz's ``ode_status``, ``risk_ode``, ``Q_ode`` and ``M_ode`` and, with the band,
        ``risk_ode_sd``, ``Q_ode_sd``, ``M_ode_sd`` (their shapes), ``risk_ode_sd_total`` and
        ``ode_band_valid``, cut to the ``measured`` times (a run stopped early measured fewer)."""
        arrays = {"ode_status": np.array(self.status)}
        if self.risk is not None:
            arrays["risk_ode"] = self.risk[:, :measured]
        if self.Q is not None and self.M is not None:
            arrays["Q_ode"], arrays["M_ode"] = self.Q[:measured], self.M[:measured]
        band = self.band
        if band is not None:
            arrays["risk_ode_sd"], arrays["risk_ode_sd_total"] = band.risk[:, :measured], band.risk_total[:, :measured]
            arrays["ode_band_valid"] = band.valid[:measured]
            if band.Q is not None and band.M is not None:
                arrays["Q_ode_sd"], arrays["M_ode_sd"] = band.Q[:measured], band.M[:measured]
        return arrays
