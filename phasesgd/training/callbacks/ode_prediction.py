"""The ODE prediction beside a simulation, solved when the training ends, within a budget."""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import time
import warnings
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from ...infra.validation import ConfigError, prefixed, require_bool, require_choice
from ...ode import ODEBudgetExceeded, ODESolution, SolverOptions, solve_ode
from ...ode.drift import MODES
from ...ode.fluctuations import Fluctuations, spread_seconds
from ...ode.problem import prepare
from ...ode.solve import solve_problem
from ...theory.order_parameters import Overlaps
from ...theory.physics import RunPhysics
from ..module import OnlineSGD
from ..prediction import Band, Prediction
from .tensorboard import ScalarLimits, TimeAxes, ode_log_dir, tensorboard, write_band, write_measurement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ODEProblem:
    """The arguments of the prediction's solves, handed to the solving process: the ODE from
    ``overlaps`` and, with ``fluctuations`` ('auto', True or False), the predicted spread
    along the ODE from their replica mean (docs/theory.md §8), in the time the first solve
    leaves of ``solver.max_seconds``; 'auto' solves it only if it should take less than
    ``simulation_seconds``, the wall time of the simulation it accompanies."""

    overlaps: Overlaps
    physics: RunPhysics
    t_eval: np.ndarray
    mode: str
    solver: SolverOptions
    fluctuations: bool | str = False
    simulation_seconds: float = math.inf
    initial: str | None = None

    def solve(self) -> tuple[ODESolution, ODESolution | str]:
        """The ODE and either its spread or why there is none."""
        start = time.perf_counter()
        sol = solve_ode(self.overlaps, self.physics, self.t_eval, mode=self.mode, solver=self.solver)
        if self.fluctuations is False:
            return sol, "off (callbacks.ode.fluctuations=false)"
        left = None if self.solver.max_seconds is None else self.solver.max_seconds - (time.perf_counter() - start)
        o = self.overlaps
        mean = Overlaps(*(None if x is None else np.asarray(x).mean(0) for x in (o.Q, o.M)), o.P, _mean(o.a))
        settings = Fluctuations(steps=FLUCTUATION_STEPS, initial=self.initial)
        problem = prepare(mean, self.physics, self.t_eval, self.mode, self.solver.quadrature)
        estimate = spread_seconds(problem, settings)
        limit = min(left if left is not None else math.inf, self.simulation_seconds)
        if self.fluctuations == "auto" and estimate > limit:
            return sol, f"off: it would take about {estimate:.0f} s, more than the {limit:.0f} s it may (auto)"
        if left is not None and left <= 0:
            return sol, "off: the ODE used the whole budget"
        options = dataclasses.replace(self.solver, max_seconds=left, max_evaluations=None)
        try:
            return sol, solve_problem(problem, options, settings)
        except ODEBudgetExceeded as err:
            return sol, f"off: over the budget ({err})"


def _mean(a):
    return None if a is None else np.asarray(a).mean(0)


# Steps of the spread's covariance over a run (docs/theory.md §8; the band is second order in them).
FLUCTUATION_STEPS = 100


# Seconds past ``max_seconds`` to wait for the solve's own deadline check (made between drift
# evaluations) before the solving process is killed.
GRACE_SECONDS = 2.0


class ODEPrediction(L.Callback):
    """The deterministic prediction beside every simulation (docs/theory.md §4–§5).

    When the training ends — so the prediction never delays the first SGD step and a
    diverging run is reported at once — it solves the order-parameter ODE from each
    replica's own initial (Q0, M0, P) (all replicas in one batched solve; or, with
    ``per_replica=False``, once from their mean) at the run's measurement times, within a
    budget of ``max_seconds`` of wall time and ``max_evaluations`` drift evaluations. Then

    - it logs the prediction to the sibling TensorBoard run ``<logger dir>/../ode`` under
      the simulation's tags (:func:`~phasesgd.training.callbacks.tensorboard.write_measurement`);
    - it hands ``risk_ode`` (R, T) and, when trajectories are kept, ``Q_ode`` (T, R, p, p)
      and ``M_ode`` (T, R, p, k) to the callbacks after it as ``module.prediction`` (a
      :class:`~phasesgd.training.prediction.Prediction`), so ``results.npz``, ``risk.png``
      and the heat maps have them;
    - ``ode_status`` in ``results.npz`` says what happened: 'solved: …', 'stopped: …'
      (over budget), 'failed: …', 'none: …' (no-ODE region) or 'not solved: …' (the run
      stopped on an error, e.g. diverged).

    Past the budget, or on a failed solve, it warns and the run's results are written
    without the prediction. ``mode='finite'`` is the finite-size ODE at the run's γ, p, d;
    'asymptotic' its d → ∞ limit. Every setting is checked here, when the callback is built
    (before the run), and a refusal names it under ``config_key`` (``callbacks.ode.mode``).
    """

    # in the end-of-run sequence (phasesgd.training.callbacks): solved before the stages that show and write it
    stage = 1

    def __init__(
        self,
        mode: str = "finite",
        method: str = "dopri5",
        rtol: float = 1e-6,
        atol: float = 1e-9,
        per_replica: bool = True,
        max_seconds: float | None = 180.0,
        max_evaluations: int | None = 100_000,
        max_replica_curves: int = 16,
        max_matrix_entries: int = 64,
        max_units: int = 16,
        fluctuations: bool | str = "auto",
        *,
        config_key: str = "callbacks.ode",
    ) -> None:
        require_choice(f"{config_key}.mode", mode, MODES)
        require_bool(f"{config_key}.per_replica", per_replica)
        if fluctuations != "auto" and not isinstance(fluctuations, bool):
            raise ConfigError(f"{config_key}.fluctuations must be true, false or 'auto', got {fluctuations!r}")
        self.fluctuations = fluctuations
        with prefixed(config_key):  # method, rtol, atol, max_evaluations, max_seconds: SolverOptions' own checks
            self.solver = SolverOptions(
                method=method, rtol=rtol, atol=atol, max_evaluations=max_evaluations, max_seconds=max_seconds
            )
        self.limits = ScalarLimits.checked(config_key, max_replica_curves, max_matrix_entries, max_units)
        self.mode, self.method, self.rtol, self.atol = mode, method, rtol, atol
        self.per_replica = per_replica
        self.max_seconds, self.max_evaluations = max_seconds, max_evaluations

    def on_train_start(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        self.started = time.perf_counter()
        if not pl_module.scaling.region.has_ode:
            log.warning("no ODE prediction: (kappa, delta) lies in the no-ODE region")

    def on_exception(self, trainer: L.Trainer, pl_module: OnlineSGD, exception: BaseException) -> None:
        pl_module.prediction = Prediction(f"not solved: the run stopped ({type(exception).__name__})")

    def on_train_end(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        if not pl_module.scaling.region.has_ode:
            pl_module.prediction = Prediction("none: (kappa, delta) lies in the no-ODE region")
            return
        try:
            problem = self._problem(pl_module)
        except ConfigError as err:  # a student with no field-space rule: no ODE, never the committee's
            self._give_up(pl_module, f"none: {err}")
            return
        budget = f"{self.max_seconds:g} s" if self.max_seconds else "no time limit"
        budget += f", {self.max_evaluations} drift evaluations" if self.max_evaluations else ""
        R = pl_module.student.replicas
        source = f"each of the {R} replicas' initial overlaps" if self.per_replica and R > 1 else "the initial overlaps"
        log.info(
            "ODE prediction: solving the %s ODE from %s to t=%.4g (budget %s)", self.mode, source, pl_module.t, budget
        )
        start = time.perf_counter()
        try:
            sol, spread = self._solve_within_budget(problem)
        except ODEBudgetExceeded as err:
            self._give_up(pl_module, f"stopped: over its budget of {budget} ({err})")
            return
        except (ValueError, RuntimeError) as err:
            self._give_up(pl_module, f"failed: {err}")
            return
        seconds = time.perf_counter() - start
        status = (
            f"solved: {problem.mode} ODE by {sol.route}, {sol.method}, {sol.evaluations} drift evaluations, "
            f"{seconds:.1f} s; spread {_spread_status(spread)}"
        )
        log.info("ODE prediction %s; risk %.4g at t=%.4g", status, float(np.mean(sol.risk[..., -1])), sol.t[-1])
        self._store(trainer, pl_module, sol, None if isinstance(spread, str) else spread, status)

    def _give_up(self, module: OnlineSGD, status: str) -> None:
        module.prediction = Prediction(status)
        log.warning("ODE prediction %s; the run's results are written without it", status)

    def _solve_within_budget(self, problem: ODEProblem) -> ODESolution:
        """``problem.solve()`` in a forked process, waited for at most ``max_seconds`` (+ grace),
        then killed. ``solve_ode`` checks its deadline between drift evaluations, but one
        evaluation can take minutes at large p (the I4 sum grows as p²(p+k)²), and a thread
        cannot be stopped inside it. Where fork is not available the solve runs here, bound
        by ``solve_ode``'s own checks only."""
        if "fork" not in multiprocessing.get_all_start_methods():
            return problem.solve()
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=self._solve_in_child, args=(problem, sender), name="ode-prediction", daemon=True)
        child.start()
        sender.close()
        try:
            if not receiver.poll(None if self.max_seconds is None else self.max_seconds + GRACE_SECONDS):
                raise ODEBudgetExceeded(f"still inside one drift evaluation after {self.max_seconds:g} s")
            kind, value, caught = receiver.recv()
        except EOFError:
            kind, value, caught = "error", RuntimeError("the solving process ended without an answer"), []
        finally:
            child.kill()
            child.join()
        for message in caught:
            log.warning("ODE prediction: %s", message)
        if kind == "error":
            raise value
        return value

    @staticmethod
    def _solve_in_child(problem: ODEProblem, sender) -> None:
        """The forked side: host arrays only (CUDA cannot be used after fork), one torch
        thread (as in DataLoader workers: a thread pool does not survive fork), warnings
        collected and handed back with the answer."""
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                answer = ("solution", problem.solve())
        except (ValueError, RuntimeError) as err:
            answer, caught = ("error", err), []
        sender.send((*answer, [str(w.message) for w in caught]))
        sender.close()

    def _problem(self, module: OnlineSGD) -> ODEProblem:
        """Everything the solve needs, on the host: initial overlaps of every replica (or
        their mean), P, the run's physics (a subclass's field-space rule included: its ODE
        is the finite-size one) and the measurement times."""
        h = module.history
        Q0, M0, a0 = h.Q[0], h.M[0], h.a[0]
        if not self.per_replica:
            Q0, M0, a0 = Q0.mean(0, keepdims=True), M0.mean(0, keepdims=True), a0.mean(0, keepdims=True)
        P = module.overlaps().P.double().cpu().numpy()
        physics = module.ode_physics()
        mode = self.mode if physics.field_rule is None else "finite"
        if mode != self.mode:
            log.warning("ODE prediction: %s has the finite-size ODE only (its own field_step)", type(module.student))
        simulation = time.perf_counter() - getattr(self, "started", time.perf_counter())
        return ODEProblem(
            Overlaps(Q0, M0, P, a0),
            physics,
            module.times(),
            mode,
            self.solver,
            self.fluctuations,
            simulation,
            module.student.init,
        )

    def _store(
        self, trainer: L.Trainer, module: OnlineSGD, sol: ODESolution, spread: ODESolution | None, status: str
    ) -> None:
        R, T = module.student.replicas, sol.t.size
        risk = np.broadcast_to(sol.risk, (R, T)).copy()
        Q = np.broadcast_to(sol.Q.swapaxes(0, 1), (T, R, *sol.Q.shape[-2:]))
        M = np.broadcast_to(sol.M.swapaxes(0, 1), (T, R, *sol.M.shape[-2:]))
        keep = module.measure.keep_trajectories
        band = None if spread is None else _band(spread, R, keep)
        module.prediction = Prediction(status, risk, Q.copy() if keep else None, M.copy() if keep else None, band)
        sim = tensorboard(trainer)
        if sim is None:
            return
        with SummaryWriter(log_dir=str(ode_log_dir(sim))) as writer:
            axes = TimeAxes(writer, module.measure.t_min)
            for i, (step, t) in enumerate(zip(module.history.steps, sol.t)):
                write_measurement(axes, step, t, risk[:, i], (Q[i], M[i]), self.limits)
                if band is not None and band.valid[i]:  # the band only where the linear noise holds
                    write_band(axes, step, t, float(risk[:, i].mean()), float(band.risk_total[:, i].mean()))


def _spread_status(spread: ODESolution | str) -> str:
    if isinstance(spread, str):
        return spread
    valid = spread.spread.valid
    if valid.all():
        return f"by linear noise ({spread.method}), valid throughout"
    until = spread.t[~valid][0]
    return f"by linear noise ({spread.method}), not valid from t={until:.4g} on (nonlinear: marked, not drawn)"


def _band(spread: ODESolution, replicas: int, keep: bool) -> Band:
    """The spread of the replica-mean ODE for every replica (the linear-noise covariance
    depends on the path only at higher order), on the run's times."""
    s = spread.spread
    T = spread.t.size
    total = s.total.risk if s.total is not None else s.risk
    return Band(
        risk=np.broadcast_to(s.risk, (replicas, T)).copy(),
        risk_total=np.broadcast_to(total, (replicas, T)).copy(),
        valid=s.valid.copy(),
        Q=np.broadcast_to(s.Q[:, None], (T, replicas, *s.Q.shape[-2:])).copy() if keep else None,
        M=np.broadcast_to(s.M[:, None], (T, replicas, *s.M.shape[-2:])).copy() if keep else None,
    )
