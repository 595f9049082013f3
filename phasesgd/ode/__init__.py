"""Order-parameter ODEs of online SGD (docs/theory.md §4–§5): drift and solver.

``solve_ode`` integrates the finite-size or asymptotic equations from given overlaps; the
parameters of a simulated run come from :class:`phasesgd.theory.physics.RunPhysics`.
"""

from .drift import (
    ODEBudgetExceeded,
    OrderParameterDrift,
    Prefactors,
    UnphysicalStateError,
    asymptotic_prefactors,
    finite_prefactors,
    prefactors,
)
from .options import METHODS, SolverOptions, TooManySteps
from .solve import ODESolution, solve_ode

__all__ = [
    "ODEBudgetExceeded",
    "METHODS",
    "ODESolution",
    "OrderParameterDrift",
    "Prefactors",
    "SolverOptions",
    "TooManySteps",
    "UnphysicalStateError",
    "asymptotic_prefactors",
    "finite_prefactors",
    "prefactors",
    "solve_ode",
]
