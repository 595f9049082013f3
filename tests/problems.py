"""Shared cases of the ODE tests: initial overlaps with a known law, and a shorthand that
spells a solve as flat keywords (``gamma0=8.0, method="BDF", second_layer=a``) for tests that
vary one setting at a time. Library code calls :func:`phasesgd.ode.solve_ode` with its
objects: this shorthand only sorts the keywords into them."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from phasesgd.ode import ODESolution, SolverOptions, solve_ode
from phasesgd.theory.order_parameters import Overlaps
from phasesgd.theory.physics import RunPhysics

PHYSICS_KEYS = {f.name for f in fields(RunPhysics)}
SOLVER_KEYS = {f.name for f in fields(SolverOptions)}


def solve(Q0: Any, M0: Any, P: Any, *, t_eval: Any, mode: str = "asymptotic", **keywords: Any) -> ODESolution:
    """``solve_ode(Overlaps(Q0, M0, P, second_layer), RunPhysics(...), t_eval, mode=…, solver=SolverOptions(...))``."""
    unknown = set(keywords) - PHYSICS_KEYS - SOLVER_KEYS - {"second_layer"}
    if unknown:
        raise TypeError(f"unknown keywords {sorted(unknown)}")
    physics = RunPhysics(**{k: v for k, v in keywords.items() if k in PHYSICS_KEYS})
    solver = SolverOptions(**{k: v for k, v in keywords.items() if k in SOLVER_KEYS})
    return solve_ode(Overlaps(Q0, M0, P, keywords.get("second_layer")), physics, t_eval, mode=mode, solver=solver)
