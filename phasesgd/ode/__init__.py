"""Order-parameter ODEs of online SGD (THEORY.md §4–§5): drift and solver.

``solve_ode`` integrates the finite-size or asymptotic equations from given overlaps;
``run_arguments`` reads its parameters off a simulation module (for callbacks), and
``solve_for_run`` solves from that module's current state.
"""

from .drift import (
    OrderParameterDrift,
    Prefactors,
    UnphysicalStateError,
    asymptotic_prefactors,
    finite_prefactors,
    prefactors,
)
from .solve import ODESolution, run_arguments, solve_for_run, solve_ode

__all__ = [
    "ODESolution",
    "OrderParameterDrift",
    "Prefactors",
    "UnphysicalStateError",
    "asymptotic_prefactors",
    "finite_prefactors",
    "prefactors",
    "run_arguments",
    "solve_for_run",
    "solve_ode",
]
