"""What a run *is*, as the ODE sees it: one path from a run (or its stored config) to
the parameters of the order-parameter equations (docs/theory.md §4–§5).

Every caller that needs the physics of a run — the ODE prediction beside a simulation,
``scripts/ode.py``, the figures and the phase diagram — goes through :class:`RunPhysics`,
so a learning-rate schedule or a trained second layer is never dropped on one path and
kept on another. The width p = round(p0 d^κ), the learning rate γ = γ0 d^(−δ) and the
clock τ = d^(1+ϑ) are defined once, in :mod:`.scaling`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import yaml
from torch import Tensor

from .activations import Activation
from .field_step import FieldRule
from .scaling import Scaling
from .schedules import schedule_from_config


def _constant_factor(t: Tensor) -> Tensor:
    return t.new_ones(t.shape)


@dataclass(frozen=True)
class RunPhysics:
    """The parameters of a run that enter the ODE, besides the overlaps: γ = γ0 d^(−δ) g(t),
    p = p0 d^κ, t = ν/d^(1+ϑ) (``theta`` None: the region's ϑ), the label noise Δ, d (None
    for the d → ∞ equations at κ = 0), the activations, the teacher's readout a* (None: all
    ones), a trained second layer's rate γ_a0 (None: fixed), weight decay λ_wd, the
    mini-batch size B, the schedule's factor g(t) on the run's clock, and the student's
    ``field_rule`` (:class:`~phasesgd.theory.field_step.FieldRule`; None: the built-in
    committee, whose ODE has closed forms).

    ``gamma0`` and ``noise`` may be arrays of a batch shape: one run per element.
    """

    gamma0: Any = 1.0
    noise: Any = 0.0
    d: int | None = None
    delta: float = 0.0
    kappa: float = 0.0
    theta: float | None = None
    teacher_activation: str | Activation = "erf"
    student_activation: str | Activation = "erf"
    teacher_second_layer: Any = None
    second_layer_lr: float | None = None
    weight_decay: float = 0.0
    batch_size: int = 1
    lr_factor: Callable[[Tensor], Tensor] = field(default=_constant_factor, compare=False)
    field_rule: FieldRule | None = field(default=None, compare=False)

    @property
    def scaling(self) -> Scaling:
        """κ, δ and ϑ: the point of the phase diagram and its clock."""
        return Scaling(kappa=self.kappa, delta=self.delta, theta=self.theta)

    def shifted(self, t_offset: float) -> RunPhysics:
        """The same physics on a clock that starts at the run's time ``t_offset`` (the
        schedule g is read on the run's clock)."""
        if t_offset == 0.0:
            return self
        factor = self.lr_factor
        return replace(self, lr_factor=lambda t: factor(t + t_offset))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RunPhysics:
        """The physics of a stored run from its resolved config (``results.npz['config']``
        or ``config.yaml``, of this release or an earlier one); the schedule is rebuilt from
        ``config['lr']``."""
        teacher, student, lr = config["teacher"], config["student"], config["lr"]
        a_star = teacher.get("second_layer")
        return cls(
            gamma0=float(lr["gamma0"]),
            noise=float(teacher["noise"]),
            d=int(config["d"]),
            delta=float(lr["delta"]),
            kappa=float(config["kappa"]),
            theta=config.get("theta"),
            teacher_activation=teacher["activation"],
            student_activation=student["activation"],
            teacher_second_layer=None if a_star is None else np.asarray(a_star, dtype=float),
            second_layer_lr=student.get("second_layer_lr"),
            weight_decay=float(student.get("weight_decay", 0.0)),
            batch_size=int(config["data"]["batch_size"]),
            lr_factor=schedule_from_config(lr).factor,
        )

    @classmethod
    def from_results(cls, results: Any) -> RunPhysics:
        """The physics of a run from its ``results.npz`` (the resolved config it stores)."""
        return cls.from_config(yaml.safe_load(str(results["config"])))
