"""A solve's budget, by wrapping: the drift counts nothing and knows no clock; the solve
hands the integrator a :class:`BudgetedDrift` that does."""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor

from .drift import ODEBudgetExceeded, OrderParameterDrift


class BudgetedDrift:
    """``drift`` with its evaluations (and Jacobians) counted and a budget checked before
    each: more than ``max_evaluations`` drift evaluations, or past ``max_seconds`` of wall
    time from construction, raise :class:`~phasesgd.ode.drift.ODEBudgetExceeded`. Everything
    else (packing, the positivity guard, the Jacobian's columns) is the drift's own."""

    def __init__(self, drift: OrderParameterDrift, max_evaluations: int | None, max_seconds: float | None) -> None:
        self.drift = drift
        self.max_evaluations = max_evaluations
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.evaluations = 0
        self.jacobians = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.drift, name)

    def check(self, t: Tensor | float) -> None:
        """Raise :class:`ODEBudgetExceeded` past ``max_evaluations`` or the deadline."""
        if self.max_evaluations is not None and self.evaluations > self.max_evaluations:
            raise ODEBudgetExceeded(f"stopped at t={float(t):.6g}: more than {self.max_evaluations} drift evaluations")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ODEBudgetExceeded(
                f"stopped at t={float(t):.6g} after {self.evaluations} drift evaluations: out of wall time"
            )

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        self.evaluations += 1
        self.check(t)
        return self.drift(t, y)

    def jacobian(self, t: Tensor, y: Tensor) -> Tensor:
        self.jacobians += 1
        self.check(t)
        return self.drift.jacobian(t, y)
