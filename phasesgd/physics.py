"""What a run *is*, as the ODE sees it: one path from a run (or its stored config) to
the parameters of the order-parameter equations (docs/theory.md §4–§5).

Every caller that needs the physics of a run — the ODE prediction beside a simulation,
``scripts/ode.py``, the figures and the phase diagram — goes through :class:`RunPhysics`,
so a learning-rate schedule or a trained second layer is never dropped on one path and
kept on another. The width p = round(p0 d^κ) and the learning rate γ = γ0 d^(−δ) are
defined once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from .activations import Activation


def student_width(p0: int | float, d: int, kappa: float) -> int:
    """p = round(p0 d^κ), at least 1 (p = p0 at κ = 0)."""
    return max(1, round(float(p0) * float(d) ** float(kappa)))


def learning_rate(gamma0: float, d: int, delta: float) -> float:
    """γ = γ0 d^(−δ)."""
    return float(gamma0) * float(d) ** (-float(delta))


def _constant_factor(t: Tensor) -> Tensor:
    return t.new_ones(t.shape)


@dataclass(frozen=True)
class RunPhysics:
    """The parameters of a run that enter the ODE, besides the overlaps (Q0, M0, P).

    ``lr_factor`` is g(t) of γ(t) = γ0 d^(−δ) g(t) on the run's clock; ``second_layer_lr``
    is γ_a0 of a trained second layer (None: the second layer is fixed);
    ``teacher_second_layer`` is a* (None: all ones).
    """

    gamma0: float
    delta: float
    kappa: float
    theta: float | None
    noise: float
    d: int
    teacher_activation: str | Activation
    student_activation: str | Activation
    teacher_second_layer: Any = None
    second_layer_lr: float | None = None
    weight_decay: float = 0.0
    batch_size: int = 1
    lr_factor: Callable[[Tensor], Tensor] = field(default=_constant_factor, compare=False)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RunPhysics:
        """The physics of a stored run from its resolved config (``results.npz['config']``
        or ``config.yaml``); the schedule is rebuilt from ``config['lr']``."""
        from hydra.utils import instantiate

        teacher, student, lr = config["teacher"], config["student"], config["lr"]
        schedule = instantiate(lr)
        return cls(
            gamma0=float(lr["gamma0"]), delta=float(lr["delta"]), kappa=float(config["kappa"]),
            theta=config.get("theta"), noise=float(teacher["noise"]), d=int(config["d"]),
            teacher_activation=teacher["activation"], student_activation=student["activation"],
            teacher_second_layer=teacher.get("second_layer"), second_layer_lr=student.get("second_layer_lr"),
            weight_decay=float(student.get("weight_decay", 0.0)), batch_size=int(config["data"]["batch_size"]),
            lr_factor=schedule.factor,
        )  # fmt: skip

    def ode_arguments(self, t_offset: float = 0.0) -> dict[str, Any]:
        """Keyword arguments of :func:`phasesgd.ode.solve_ode` for this run; the ODE's t = 0
        is the run's ``t_offset`` (the schedule is read on the run's clock)."""
        factor = self.lr_factor
        return dict(
            gamma0=self.gamma0, delta=self.delta, kappa=self.kappa, theta=self.theta, noise=self.noise, d=self.d,
            teacher_activation=self.teacher_activation, student_activation=self.student_activation,
            teacher_second_layer=None if self.teacher_second_layer is None else np.asarray(self.teacher_second_layer, dtype=float),
            second_layer_lr=self.second_layer_lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
            lr_factor=factor if t_offset == 0.0 else (lambda t: factor(t + t_offset)),
        )  # fmt: skip
