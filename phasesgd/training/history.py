"""Everything a run has measured, on the host in float64: what results.npz, TensorBoard and
a checkpoint are made from."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch


@dataclass
class History:
    """The measurements so far: SGD step ν, the risk of every replica, γ, and (every time,
    or only first and last without ``keep_trajectories``) Q, M and the second layer a."""

    steps: list[int] = field(default_factory=list)
    risk: list[np.ndarray] = field(default_factory=list)  # (R,) each
    lr: list[float] = field(default_factory=list)
    Q: list[np.ndarray] = field(default_factory=list)  # (R, p, p) each
    M: list[np.ndarray] = field(default_factory=list)  # (R, p, k) each
    a: list[np.ndarray] = field(default_factory=list)  # (R, p) each

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def has_trajectories(self) -> bool:
        """Whether Q, M and a were kept at every measurement."""
        return bool(self.Q) and len(self.Q) == len(self)

    def append(self, step: int, risk: np.ndarray, lr: float, overlaps: tuple[np.ndarray, ...] | None) -> None:
        """One measurement; ``overlaps`` (Q, M, a), or None where the trajectory is not kept."""
        self.steps.append(step)
        self.risk.append(risk)
        self.lr.append(lr)
        if overlaps is not None:
            for values, new in zip((self.Q, self.M, self.a), overlaps):
                values.append(new)

    def arrays(self, steps_per_unit: float) -> dict[str, np.ndarray]:
        """The history's arrays of results.npz (docs/configuration.md): t = ν/τ, steps, lr,
        risk (R, T), initial and final overlaps, and Q_t, M_t (T, R, …) when kept."""
        results = {
            "t": np.asarray(self.steps, dtype=np.float64) / steps_per_unit,
            "steps": np.asarray(self.steps, dtype=np.int64),
            "lr": np.asarray(self.lr),
            "risk": np.stack(self.risk, axis=1),
            "Q0": self.Q[0],
            "M0": self.M[0],
            "a0": self.a[0],
            "Q": self.Q[-1],
            "M": self.M[-1],
            "a": self.a[-1],
        }
        if self.has_trajectories:
            results["Q_t"], results["M_t"] = np.stack(self.Q), np.stack(self.M)
        return results

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        """Tensors only, for a checkpoint loaded with ``weights_only=True``."""
        return {f.name: [torch.as_tensor(v) for v in getattr(self, f.name)] for f in fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict[str, list[torch.Tensor]]) -> History:
        return cls(**{key: [v.numpy() if v.ndim else v.item() for v in values] for key, values in state.items()})
