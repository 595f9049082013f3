"""Learning-rate schedules γ(t) = γ0 d^(−δ) · g(t), with t = ν/d^(1+ϑ) (docs/theory.md §5).

Subclasses define the dimensionless factor g(t); ``delta`` sets the scaling with d and
thereby, with κ, the region of the phase diagram.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..infra.validation import require_finite, require_numbers, require_positive
from .scaling import learning_rate


class LearningRate:
    """Constant schedule, g(t) = 1."""

    def __init__(self, gamma0: float = 1.0, delta: float = 0.0) -> None:
        require_positive("lr.gamma0", gamma0)
        require_finite("lr.delta", delta)
        self.gamma0, self.delta = float(gamma0), float(delta)

    def factor(self, t: Tensor) -> Tensor:
        """g(t), the schedule's multiplier of γ0 d^(−δ)."""
        return torch.ones_like(t)

    def __call__(self, t: Tensor, d: int) -> Tensor:
        """γ(t) = γ0 d^(−δ) g(t) for a tensor of times."""
        return learning_rate(self.gamma0, d, self.delta) * self.factor(t)


Constant = LearningRate


class PowerLaw(LearningRate):
    """g(t) = (1 + t/t0)^(−β)."""

    def __init__(self, gamma0: float = 1.0, delta: float = 0.0, t0: float = 10.0, beta: float = 1.0) -> None:
        super().__init__(gamma0, delta)
        require_positive("lr.t0", t0)
        require_positive("lr.beta", beta)
        self.t0, self.beta = float(t0), float(beta)

    def factor(self, t: Tensor) -> Tensor:
        return (1.0 + t / self.t0) ** (-self.beta)


class StepWise(LearningRate):
    """g(t) = factor^n(t), n(t) the number of milestones ≤ t (times t > 0, strictly increasing)."""

    def __init__(
        self, gamma0: float = 1.0, delta: float = 0.0, milestones: Sequence[float] = (100.0,), factor: float = 0.1
    ) -> None:
        super().__init__(gamma0, delta)
        require_positive("lr.factor", factor)
        self.milestones = require_numbers("lr.milestones", milestones, positive=True, increasing=True)
        self.step_factor = float(factor)

    def factor(self, t: Tensor) -> Tensor:
        edges = torch.tensor(self.milestones, dtype=t.dtype, device=t.device)
        return self.step_factor ** torch.bucketize(t, edges, right=True).to(t.dtype)


#: The built-in schedules by class name: a stored config's ``lr`` block is rebuilt from its
#: values and the class's name alone, so that runs stay readable when a module moves.
SCHEDULES: dict[str, type[LearningRate]] = {"LearningRate": LearningRate, "PowerLaw": PowerLaw, "StepWise": StepWise}


def schedule_from_config(block: dict) -> LearningRate:
    """The schedule a config's ``lr`` block describes (its ``_target_`` read by class name
    for the built-in schedules; any other target is imported by Hydra)."""
    values = {key: value for key, value in block.items() if key != "_target_"}
    target = str(block.get("_target_", "LearningRate"))
    builtin = SCHEDULES.get(target.rpartition(".")[2])
    if builtin is not None:
        return builtin(**values)
    from hydra.utils import instantiate

    return instantiate(block)
