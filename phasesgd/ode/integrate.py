"""Integrating a prepared drift: torchdiffeq's explicit methods, SciPy's implicit ones, and
the automatic choice between them.

Stiffness: after the plateau the state relaxes fast around a slowly moving fixed point
(R → 0.1 Δ on the blue line, or the slow decay at Δ = 0), so an explicit method is held
to steps of O(1) by stability however loose the tolerance, while BDF crosses such
stretches in a few large steps, each Jacobian costing p(p+1)/2 + pk (+ p) drift columns.

``method='auto'`` runs dopri5, watching its accepted steps through torchdiffeq's public
step hooks (``callback_accept_step``). It switches to BDF, from the state of the step
where it decides, once the step size has stopped growing (flat within a factor 1.5 over
:data:`STIFF_WINDOW` steps: stability-limited) *and* the explicit method's projected
evaluations to the end exceed :data:`JACOBIAN_WORTH` Jacobians' worth of columns; wide
students (large N) therefore stay explicit. An explicit method that needs more than
``max_steps`` steps between two output times continues with the ``fallback`` from there.
Outputs before a switch are recovered from the recorded accepted states (one short step
each), so no explicit work is repeated.
"""

from __future__ import annotations

import bisect
import logging
import warnings
from collections import deque

import scipy.linalg
import scipy.sparse
import torch
from scipy.integrate import solve_ivp
from torch import Tensor
from torchdiffeq import odeint

from ..theory.integrals import covariance
from .drift import OrderParameterDrift, UnphysicalStateError, check_physical
from .options import SCIPY_IMPLICIT, SCIPY_METHODS, TORCHDIFFEQ_ADAPTIVE, TORCHDIFFEQ_FIXED, SolverOptions, TooManySteps

log = logging.getLogger(__name__)

# Accepted steps over which a flat step size marks the explicit method as stability-limited.
STIFF_WINDOW = 16
# The switch to BDF pays when the explicit method's remaining evaluations exceed this many
# Jacobians (jacobian_columns drift columns each): BDF reuses a Jacobian over many steps.
JACOBIAN_WORTH = 4
# Stages per accepted dopri5 step (FSAL), for the projection of its remaining cost.
_DOPRI5_EVALS_PER_STEP = 6
AUTO_EXPLICIT, AUTO_IMPLICIT = "dopri5", "BDF"


class _LeaveExplicit(Exception):  # noqa: N818 (control flow, not an error)
    """Raised from the step hook: continue from the accepted state (t, y) with ``method``."""

    def __init__(self, t: Tensor, y: Tensor, method: str, reason: str) -> None:
        super().__init__(reason)
        self.t, self.y, self.method, self.reason = t, y, method, reason


class _StepMonitor:
    """The drift as torchdiffeq sees it, with its step hooks: the positivity guard on every
    step, the accepted steps (their start states, to recover outputs before a switch), a
    step count per output interval, and the stiffness test of ``method='auto'``."""

    def __init__(self, drift: OrderParameterDrift, options: SolverOptions, t: Tensor, columns: int, auto: bool) -> None:
        self.drift, self.options, self.t_end, self.columns = drift, options, float(t[-1]), columns
        self.outputs = t.tolist()
        self.auto = auto
        self.next_output, self.steps = 1, 0  # accepted steps since the last output time passed
        self.recent: deque[float] = deque(maxlen=STIFF_WINDOW)
        self.accepted: list[tuple[float, Tensor]] = []

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return self.drift(t, y)

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.drift.callback_step(t0, y0, dt)

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        while self.next_output < len(self.outputs) and float(t0) >= self.outputs[self.next_output]:
            self.next_output, self.steps = self.next_output + 1, 0
        self.steps += 1
        self.accepted.append((float(t0), y0))
        self.recent.append(float(dt))
        max_steps, fallback = self.options.max_steps, self.options.fallback
        if max_steps is not None and self.steps > max_steps:
            reason = f"more than max_steps={max_steps} steps between two output times (stiff ODE)"
            if fallback is None:
                raise TooManySteps(f"{reason} at t={float(t0):.6g}")
            raise _LeaveExplicit(t0, y0, fallback, reason)
        if self.auto and len(self.recent) == STIFF_WINDOW and max(self.recent) <= 1.5 * min(self.recent):
            remaining = (self.t_end - float(t0)) / (sum(self.recent) / STIFF_WINDOW) * _DOPRI5_EVALS_PER_STEP
            if remaining > JACOBIAN_WORTH * self.columns:
                reason = (
                    f"step size flat at {float(dt):.3g} over {STIFF_WINDOW} steps (stiff); ~{remaining:.0f} "
                    f"explicit evaluations left > {JACOBIAN_WORTH} Jacobians of {self.columns} columns"
                )
                raise _LeaveExplicit(t0, y0, AUTO_IMPLICIT, reason)

    def restep(self, t: Tensor, before: float, method: str) -> list[Tensor]:
        """States at the output times t < ``before``, each from the last accepted step that
        starts at or before it: one step shorter than an accepted one, so within tolerance."""
        opts, starts = self.options, [s for s, _ in self.accepted]
        states = []
        for tk in t.tolist():
            if tk >= before:
                break
            r = max(bisect.bisect_right(starts, tk) - 1, 0)
            t_r, y_r = self.accepted[r]
            if tk == t_r:
                states.append(y_r)
                continue
            grid = torch.tensor([t_r, tk], dtype=t.dtype, device=t.device)
            states.append(
                odeint(
                    self.drift,
                    y_r,
                    grid,
                    method=method,
                    rtol=opts.rtol,
                    atol=opts.atol,
                    options={"first_step": tk - t_r},
                )[-1]
            )
        return states


def _integrate_scipy(drift: OrderParameterDrift, y0: Tensor, t: Tensor, solver: str, options: SolverOptions) -> Tensor:
    """SciPy's ``solve_ivp`` on the flattened state from t[0], states at t (T, …, N).

    Implicit solvers get the block-diagonal Jacobian of :meth:`OrderParameterDrift.jacobian`
    (one block per batch element), one batched drift call instead of one per column."""
    shape, like = y0.shape, dict(dtype=y0.dtype, device=y0.device)
    N = shape[-1]

    def state(y) -> Tensor:
        return torch.as_tensor(y).to(**like).reshape(shape)

    def fun(s: float, y):
        return drift(torch.tensor(s, **like), state(y)).reshape(-1).cpu().numpy()

    def jac(s: float, y):
        blocks = drift.jacobian(torch.tensor(s, **like), state(y)).reshape(-1, N, N).cpu().numpy()
        return scipy.linalg.block_diag(*blocks) if solver == "LSODA" else scipy.sparse.block_diag(blocks, format="csc")

    if t.shape[0] == 1:
        return y0[None]
    times = t.cpu().numpy()
    sol = solve_ivp(
        fun,
        (times[0], times[-1]),
        y0.reshape(-1).cpu().numpy(),
        method=solver,
        t_eval=times,
        rtol=options.rtol,
        atol=options.atol,
        **({"jac": jac} if solver in SCIPY_IMPLICIT else {}),
    )
    if not sol.success or sol.y.shape[1] != len(times):
        raise UnphysicalStateError(f"{solver} stopped at t={sol.t[-1]:.6g} before t={times[-1]:.6g}: {sol.message}")
    ys = torch.as_tensor(sol.y.T).to(**like).reshape(len(times), *shape)
    Q, M, _ = drift.split(ys)  # no step hook here: guard the outputs
    for i in range(len(times)):
        check_physical(covariance(Q[i], M[i], drift.P), t[i])
    return ys


class Method:
    """One entry of :data:`METHODS`: how a method named in ``SolverOptions.method`` integrates."""

    def __init__(self, name: str) -> None:
        self.name = name

    def integrate(
        self, drift: OrderParameterDrift, y0: Tensor, t: Tensor, options: SolverOptions
    ) -> tuple[Tensor, str]:
        """States at the times t (T, …, N) from y0 at t[0], and the method(s) used."""
        raise NotImplementedError


class FixedGrid(Method):
    """A torchdiffeq method on a fixed grid (``step_size``): one call, no monitor."""

    def integrate(self, drift, y0, t, options):
        step = {} if options.step_size is None else {"step_size": options.step_size}
        return odeint(drift, y0, t, method=self.name, options=step or None), self.name


class SciPy(Method):
    """A SciPy ``solve_ivp`` method; the implicit ones get the batched Jacobian."""

    def integrate(self, drift, y0, t, options):
        return _integrate_scipy(drift, y0, t, self.name, options), self.name


class Adaptive(Method):
    """A torchdiffeq adaptive method under the step monitor: past ``max_steps`` steps between
    two output times it continues with ``options.fallback`` (SciPy) from the last accepted state."""

    explicit: str
    auto = False

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.explicit = name

    def integrate(self, drift, y0, t, options):
        monitor = _StepMonitor(drift, options, t, drift.jacobian_columns(y0.shape[-1]), self.auto)
        try:
            ys = odeint(monitor, y0, t, method=self.explicit, rtol=options.rtol, atol=options.atol)
        except _LeaveExplicit as leave:
            switch = leave
        else:
            if self.auto:
                log.info("ODE solver (auto): %s throughout (not stiff, or too wide for BDF to pay)", self.explicit)
            return ys, self.explicit
        if self.auto:
            log.info(
                "ODE solver (auto): %s until t=%.6g, then %s: %s",
                self.explicit,
                float(switch.t),
                switch.method,
                switch.reason,
            )
        else:
            warnings.warn(
                f"{self.name} needed {switch.reason}; continuing with {switch.method} from t={float(switch.t):.6g}",
                stacklevel=4,
            )
        head = monitor.restep(t, float(switch.t), self.explicit)
        rest = t[len(head) :]
        tail = _integrate_scipy(drift, switch.y, torch.cat([switch.t.reshape(1).to(t), rest]), switch.method, options)
        return torch.cat([torch.stack(head), tail[1:]]), f"{self.explicit}+{switch.method}"


class Auto(Adaptive):
    """dopri5 while the ODE is not stiff, then BDF once the step size is stability-limited and
    the switch pays (see the module docstring)."""

    auto = True

    def __init__(self, name: str = "auto") -> None:
        super().__init__(name)
        self.explicit = AUTO_EXPLICIT


#: Every method ``SolverOptions.method`` may name (:data:`.options.METHODS`): the one place a name is dispatched.
SOLVERS: dict[str, Method] = {
    "auto": Auto(),
    **{name: Adaptive(name) for name in TORCHDIFFEQ_ADAPTIVE},
    **{name: FixedGrid(name) for name in TORCHDIFFEQ_FIXED},
    **{name: SciPy(name) for name in SCIPY_METHODS},
}


def integrate(drift: OrderParameterDrift, y0: Tensor, t: Tensor, options: SolverOptions) -> tuple[Tensor, str]:
    """States at the times t (T, …, N) from y0 at t[0], and the method(s) used."""
    return SOLVERS[options.method].integrate(drift, y0, t, options)
