"""solve_ode: prepare the problem (:mod:`.problem`), integrate it (:mod:`.integrate`) under
the settings of :class:`~phasesgd.ode.options.SolverOptions`, and evaluate the risk."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..infra.threads import use_threads
from ..theory.integrals.weighted import UPSILON_CHUNK
from ..theory.order_parameters import Overlaps, risk_from_overlaps
from ..theory.physics import RunPhysics
from ..theory.scaling import Region
from .drift import Mode
from .fluctuations import Fluctuations, Spread, fluctuation_grid, predict_spread
from .guards import BudgetedDrift
from .integrate import integrate
from .options import SolverOptions
from .problem import ArrayLike, Problem, prepare


@dataclass(frozen=True)
class ODESolution:
    """Solution at the times ``t`` (T,), as numpy arrays with the batch axes first:
    ``risk`` (…, T), ``Q`` (…, T, p, p), ``M`` (…, T, p, k), ``a`` (…, T, p) when the
    second layer is trained (else None). ``method`` names the method(s) that produced it
    ('dopri5+BDF' when the solve switched); ``evaluations`` counts drift evaluations;
    ``spread`` is the predicted spread (:class:`~phasesgd.ode.fluctuations.Spread`) when asked for.
    ``route`` says where the drift came from: 'closed forms' or 'quadrature (S points)'."""

    t: np.ndarray
    risk: np.ndarray
    Q: np.ndarray
    M: np.ndarray
    a: np.ndarray | None
    region: Region
    mode: str
    method: str
    evaluations: int
    spread: Spread | None = None
    route: str = "closed forms"


def numbers_per_op(problem: Problem) -> float:
    """Numbers touched by the largest elementwise operation of one drift evaluation: the
    (p, n) Stein coefficients of T, and (with the I4 term) one chunk of the Υ sum, which is
    cache-sized (:data:`~phasesgd.theory.integrals.weighted.UPSILON_CHUNK`) whatever p. So the ODE
    runs on one thread unless a large batch makes those operations large: below that, a second
    thread costs more in synchronisation than it saves."""
    drift, batch = problem.drift, math.prod(problem.batch)
    p, n = drift.p, drift.p + drift.k
    upsilon_op = min(batch * p * (p + 1) / 2 * n * n, max(UPSILON_CHUNK, batch * n * n)) if drift.has_noise else 0
    return max(batch * p * n, upsilon_op)


def route(problem: Problem) -> str:
    """Where the drift comes from: the committee's closed forms, or the quadrature of a rule."""
    if problem.drift.rule_rates is None:
        return "closed forms"
    return f"quadrature of the student's field_step ({problem.quadrature.points} points)"


def solve_problem(problem: Problem, options: SolverOptions, fluctuations: Fluctuations | None = None) -> ODESolution:
    """Integrate a prepared problem and evaluate R(Q, M, P) along the solution; with
    ``fluctuations``, the predicted spread beside it (:mod:`.fluctuations`)."""
    drift = BudgetedDrift(problem.drift, options.max_evaluations, options.max_seconds)
    previous = torch.get_num_threads()
    try:
        use_threads(numbers_per_op(problem), options.threads)
        if fluctuations is None:
            ys, used = integrate(drift, problem.y0, problem.t_full, options)
            ys, spread = ys[problem.t_full.shape[0] - problem.t.shape[0] :], None
        else:
            times, outputs = fluctuation_grid(problem.t_full, fluctuations.steps)
            path, used = integrate(drift, problem.y0, times, options)
            spread = predict_spread(problem, drift, path, outputs, fluctuations)
            ys = path[2 * outputs][problem.t_full.shape[0] - problem.t.shape[0] :]
    finally:
        torch.set_num_threads(previous)
    t, batch, p = problem.t, problem.batch, problem.fields.p
    ys = ys.movedim(0, len(batch))  # (…, T, N)
    Q, M, a = drift.split(ys)
    if a is None:
        a = problem.a0.unsqueeze(-2).expand(*batch, t.shape[0], p)
    risk = risk_from_overlaps(Q, M, problem.P, problem.fields.student, problem.fields.teacher, a, problem.a_star)
    numpy = lambda x: x.detach().cpu().numpy()  # noqa: E731
    return ODESolution(
        t=numpy(t),
        risk=numpy(risk),
        Q=numpy(Q),
        M=numpy(M),
        a=numpy(a) if problem.trained else None,
        region=problem.scaling.region,
        mode=problem.mode,
        method=used,
        evaluations=drift.evaluations,
        spread=spread,
        route=route(problem),
    )


def solve_ode(
    overlaps: Overlaps,
    physics: RunPhysics,
    t_eval: ArrayLike,
    *,
    mode: Mode = "asymptotic",
    solver: SolverOptions | str | None = None,
    fluctuations: Fluctuations | bool = False,
) -> ODESolution:
    """Solve dQ/dt, dM/dt (and da/dt if ``physics.second_layer_lr`` is set) of docs/theory.md
    §4–§5 from ``overlaps`` (Q0, M0, P and a0) at t = 0, P fixed, and evaluate R(Q, M, P)
    at ``t_eval``.

    ``mode='finite'``: the finite-size ODE at γ = γ0 d^(−δ), p, d, τ = d^(1+ϑ) (needs
    ``physics.d``); ``mode='asymptotic'``: its d → ∞ limit in the region of (κ, δ) (see
    :func:`~phasesgd.ode.drift.asymptotic_prefactors`). The overlaps may carry leading batch
    axes, and ``physics.gamma0`` and ``physics.noise`` may be arrays of the batch shape (one
    run per element). The risk excludes the label noise Δ/2.

    ``solver``: a :class:`~phasesgd.ode.options.SolverOptions` or a method's name (default
    ``SolverOptions()``). Past its ``max_evaluations`` or ``max_seconds`` it raises
    :class:`~phasesgd.ode.drift.ODEBudgetExceeded`.

    The drift is the committee's closed forms for ``physics.field_rule`` None, and the
    quadrature of that rule (``solver.quadrature``) otherwise (``ODESolution.route`` says
    which). ``fluctuations``: True or a :class:`~phasesgd.ode.fluctuations.Fluctuations`
    adds the predicted spread of docs/theory.md §8 (``ODESolution.spread``; needs ``physics.d``).
    """
    if solver is None or isinstance(solver, str):
        solver = SolverOptions() if solver is None else SolverOptions(method=solver)
    if fluctuations is True:
        fluctuations = Fluctuations()
    problem = prepare(overlaps, physics, t_eval, mode, solver.quadrature)
    return solve_problem(problem, solver, fluctuations or None)


def predicted_concentration(
    cases: list[tuple[Overlaps, RunPhysics, float]], settings: Fluctuations = Fluctuations(initial="gaussian")
) -> tuple[float, np.ndarray]:
    """The concentration exponent c the linear noise predicts for a cell of the diagram: for
    each (mean initial overlaps, physics at one d, matched time t*) of ``cases``, the predicted
    spread over replicas of the single entries Q_jj at t*, pooled over j (√mean_j Var Q_jj, the
    measured diagram's observable), then c = −slope of log spread against log d by least
    squares. Returns c and the spreads; c is NaN where the band does not hold at some t*."""
    spreads, ds = [], []
    for overlaps, physics, t in cases:
        sol = solve_ode(overlaps, physics, [t], mode="finite", fluctuations=settings)
        s = sol.spread.total if sol.spread.total is not None else sol.spread
        if not sol.spread.valid.all():
            return math.nan, np.asarray(spreads)
        spreads.append(float(np.sqrt((np.diagonal(s.Q[..., -1, :, :], axis1=-2, axis2=-1) ** 2).mean())))
        ds.append(physics.d)
    slope = np.polyfit(np.log(ds), np.log(spreads), 1)[0]
    return float(-slope), np.asarray(spreads)
