"""Solver settings of :func:`phasesgd.ode.solve_ode`, validated in one place.

Methods: ``'auto'`` (default: dopri5 while the ODE is not stiff, SciPy's BDF with the
batched Jacobian once it is and the switch pays, see :mod:`.integrate`), any
torchdiffeq method named in :data:`TORCHDIFFEQ_METHODS`, or a SciPy ``solve_ivp``
method named in :data:`SCIPY_METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..infra.validation import require_at_least, require_choice, require_positive
from .quadrature import Quadrature

# torchdiffeq 0.2's public method names (its 'scipy_solver' wrapper takes no Jacobian
# and does not report failures, so SciPy methods are run directly instead).
TORCHDIFFEQ_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
TORCHDIFFEQ_FIXED = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
TORCHDIFFEQ_METHODS = (*TORCHDIFFEQ_ADAPTIVE, *TORCHDIFFEQ_FIXED)
SCIPY_IMPLICIT = ("LSODA", "BDF", "Radau")
SCIPY_METHODS = (*SCIPY_IMPLICIT, "RK45", "RK23", "DOP853")
METHODS = ("auto", *TORCHDIFFEQ_METHODS, *SCIPY_METHODS)


@dataclass(frozen=True)
class SolverOptions:
    """How to integrate.

    ``method``: see the module docstring. ``rtol``/``atol``: local error tolerances of the
    adaptive methods. ``step_size``: the step of fixed-grid methods ('rk4', 'euler', …).
    ``max_steps``: accepted steps an adaptive torchdiffeq method may take between two
    output times before the solve continues with ``fallback`` (a SciPy method; None:
    raise :class:`TooManySteps`). ``max_evaluations``/``max_seconds``: budget of the
    whole solve (fallback included), past which :class:`~phasesgd.ode.drift.ODEBudgetExceeded`
    is raised. ``threads``: torch's CPU threads during the solve (None: chosen from the
    problem size by :func:`phasesgd.infra.threads.use_threads`; restored afterwards).
    ``quadrature``: the frozen samples of a drift without closed forms (a student's own
    field-space rule, :mod:`.quadrature`) and of the diffusion.
    """

    method: str = "auto"
    rtol: float = 1e-6
    atol: float = 1e-9
    step_size: float | None = None
    max_steps: int | None = 10_000
    fallback: str | None = "BDF"
    max_evaluations: int | None = None
    max_seconds: float | None = None
    threads: int | None = None
    quadrature: Quadrature = Quadrature()

    def __post_init__(self) -> None:
        require_choice("method", self.method, METHODS)
        if self.fallback is not None:
            require_choice("fallback", self.fallback, SCIPY_METHODS)
        require_positive("rtol", self.rtol)
        require_positive("atol", self.atol)
        if self.step_size is not None:
            require_positive("step_size", self.step_size)
        if self.max_steps is not None:
            require_at_least("max_steps", self.max_steps, 1)
        if self.max_evaluations is not None:
            require_at_least("max_evaluations", self.max_evaluations, 1)
        if self.max_seconds is not None:
            require_positive("max_seconds", self.max_seconds)
        if self.threads is not None:
            require_at_least("threads", self.threads, 1)


class TooManySteps(RuntimeError):
    """An adaptive explicit method took more than ``max_steps`` steps between two output
    times (the ODE is stiff there) and no fallback was allowed."""
