"""Integrating the order-parameter ODEs and the risk along the solution.

Methods: any torchdiffeq method ('dopri5' by default, 'dopri8', 'rk4', 'euler', …), or a
SciPy solver by name ('BDF', 'Radau', 'LSODA' implicit; 'RK45', 'DOP853' explicit) run by
``scipy.integrate.solve_ivp`` with the batched finite-difference Jacobian of
:meth:`OrderParameterDrift.jacobian` (torchdiffeq's own ``scipy_solver`` wrapper takes no
Jacobian and does not report failures, so it is not used).

Stiffness: after the plateau the state relaxes fast around a slowly moving fixed point
(R → 0.1 Δ on the blue line, or the slow decay at Δ = 0), so an explicit method is held to
steps of O(1) by stability however loose the tolerance. 'BDF' crosses such stretches in
far fewer steps (blue line to t = 1e4: ~6x faster than 'dopri5'). When an adaptive
torchdiffeq method needs more than ``max_steps`` steps between two output times, the
solve restarts with the stiff ``fallback`` ('BDF' by default) and warns.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
import torch
from scipy.integrate import solve_ivp
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS

from ..activations import Activation, get_activation
from ..integrals import FieldActivations, covariance
from ..order_parameters import risk_from_overlaps
from ..regimes import Region, Scaling
from ..validation import require_at_least, require_choice, require_nonnegative, require_positive
from .drift import MODES, LrFactor, Mode, OrderParameterDrift, UnphysicalStateError, check_physical, prefactors

SCIPY_SOLVERS = ("LSODA", "BDF", "Radau", "RK45", "RK23", "DOP853")
IMPLICIT = ("LSODA", "BDF", "Radau")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
METHODS = (*(m for m in SOLVERS if m != "scipy_solver"), *SCIPY_SOLVERS)

ArrayLike = np.ndarray | Tensor | Sequence | float


@dataclass(frozen=True)
class ODESolution:
    """Solution at the times ``t`` (T,), as numpy arrays with the batch axes first:
    ``risk`` (…, T), ``Q`` (…, T, p, p), ``M`` (…, T, p, k), ``a`` (…, T, p) when the
    second layer is trained (else None). ``method`` is the method that produced it
    (the fallback if the first one gave up); ``evaluations`` counts drift evaluations."""

    t: np.ndarray
    risk: np.ndarray
    Q: np.ndarray
    M: np.ndarray
    a: np.ndarray | None
    region: Region
    mode: str
    method: str
    evaluations: int


def _tensor(name: str, value: ArrayLike, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.as_tensor(np.asarray(value) if isinstance(value, (list, tuple)) else value)
    t = t.to(dtype=dtype, device=device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got non-finite entries")
    return t


def _times(t_eval: ArrayLike, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = _tensor("t_eval", t_eval, dtype, device).reshape(-1)
    if t.numel() == 0 or bool((t < 0).any()) or bool((t[1:] <= t[:-1]).any()):
        raise ValueError(f"t_eval must be a non-empty 1-D sequence of times >= 0, strictly increasing, got {t_eval!r}")
    return t


def _check_shapes(Q0: Tensor, M0: Tensor, P: Tensor, a: Tensor | None, a_star: Tensor | None) -> None:
    if Q0.ndim < 2 or Q0.shape[-1] != Q0.shape[-2]:
        raise ValueError(f"Q0 must have shape (..., p, p), got {tuple(Q0.shape)}")
    p = Q0.shape[-1]
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must have shape (k, k) (shared by the batch), got {tuple(P.shape)}")
    k = P.shape[0]
    if M0.ndim < 2 or M0.shape[-2:] != (p, k):
        raise ValueError(f"M0 must have shape (..., p, k) = (..., {p}, {k}), got {tuple(M0.shape)}")
    if a is not None and (a.ndim < 1 or a.shape[-1] != p):
        raise ValueError(f"second_layer must have shape (..., p) = (..., {p}), got {tuple(a.shape)}")
    if a_star is not None and a_star.shape != (k,):
        raise ValueError(f"teacher_second_layer must have shape (k,) = ({k},), got {tuple(a_star.shape)}")
    for name, S in (("Q0", Q0), ("P", P)):
        if not torch.allclose(S, S.transpose(-1, -2), rtol=1e-10, atol=1e-12):
            raise ValueError(f"{name} must be symmetric")


def _integrate_scipy(drift: OrderParameterDrift, y0: Tensor, t: Tensor, solver: str, rtol: float, atol: float) -> Tensor:
    """SciPy's ``solve_ivp`` on the flattened state; implicit solvers get the block-diagonal
    Jacobian of :meth:`OrderParameterDrift.jacobian` (one block per batch element), which
    costs one batched drift call instead of one call per state entry."""
    shape, like = y0.shape, dict(dtype=y0.dtype, device=y0.device)
    N = shape[-1]

    def state(y: np.ndarray) -> Tensor:
        return torch.as_tensor(y).to(**like).reshape(shape)

    def fun(s: float, y: np.ndarray) -> np.ndarray:
        return drift(torch.tensor(s, **like), state(y)).reshape(-1).cpu().numpy()

    def jac(s: float, y: np.ndarray):
        blocks = drift.jacobian(torch.tensor(s, **like), state(y)).reshape(-1, N, N).cpu().numpy()
        return scipy.linalg.block_diag(*blocks) if solver == "LSODA" else scipy.sparse.block_diag(blocks, format="csc")

    if t.shape[0] == 1:
        return y0[None]
    times = t.cpu().numpy()
    sol = solve_ivp(
        fun, (times[0], times[-1]), y0.reshape(-1).cpu().numpy(), method=solver, t_eval=times,
        rtol=rtol, atol=atol, **({"jac": jac} if solver in IMPLICIT else {}),
    )  # fmt: skip
    if not sol.success or sol.y.shape[1] != len(times):
        raise UnphysicalStateError(f"{solver} stopped at t={sol.t[-1]:.6g} before t={times[-1]:.6g}: {sol.message}")
    ys = torch.as_tensor(sol.y.T).to(**like).reshape(len(times), *shape)
    Q, M, _ = drift.split(ys)  # no step callback here: guard the outputs
    for i in range(len(times)):
        check_physical(covariance(Q[i], M[i], drift.P), t[i])
    return ys


def _integrate(
    drift: OrderParameterDrift, y0: Tensor, t: Tensor, method: str, rtol: float, atol: float, max_steps: int | None, step: float | None
) -> Tensor:
    """y at the times t (T, …, N) by ``method``; the step callback of ``drift`` guards Ω."""
    if method in SCIPY_SOLVERS:
        return _integrate_scipy(drift, y0, t, method, rtol, atol)
    options: dict[str, Any] = {}
    if step is not None:
        options["step_size"] = step
    if max_steps and method in ADAPTIVE:
        options["max_num_steps"] = max_steps
    return odeint(drift, y0, t, method=method, rtol=rtol, atol=atol, options=options or None)


def solve_ode(
    Q0: ArrayLike,
    M0: ArrayLike,
    P: ArrayLike,
    *,
    gamma0: ArrayLike,
    delta: float = 0.0,
    kappa: float = 0.0,
    noise: ArrayLike = 0.0,
    d: int | None = None,
    teacher_activation: str | Activation = "erf",
    student_activation: str | Activation = "erf",
    t_eval: ArrayLike,
    mode: Mode = "asymptotic",
    theta: float | None = None,
    second_layer: ArrayLike | None = None,
    teacher_second_layer: ArrayLike | None = None,
    second_layer_lr: float | None = None,
    weight_decay: float = 0.0,
    batch_size: int = 1,
    lr_factor: LrFactor | None = None,
    method: str = "dopri5",
    rtol: float = 1e-6,
    atol: float = 1e-9,
    step_size: float | None = None,
    max_steps: int | None = 10_000,
    fallback: str | None = "BDF",
    max_evaluations: int | None = None,
    max_seconds: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
) -> ODESolution:
    """Solve dQ/dt, dM/dt (and da/dt if ``second_layer_lr`` is given) of THEORY §4–§5
    from (Q0, M0) at t = 0, P fixed, and evaluate R(Q, M, P) at ``t_eval``.

    ``mode='finite'``: the finite-size ODE at γ = γ0 d^(−δ), p, d, τ = d^(1+ϑ) (needs ``d``);
    ``mode='asymptotic'``: its d → ∞ limit in the region of (κ, δ) (see
    :func:`~phasesgd.ode.drift.asymptotic_prefactors`). Q0, M0 and ``second_layer`` may
    carry leading batch axes; ``gamma0`` and ``noise`` may be arrays of the batch shape
    (one run per element). ``lr_factor`` is g(t) of γ(t) = γ0 d^(−δ) g(t). ``method``: see
    the module docstring; ``step_size`` sets the step of fixed-grid methods ('rk4',
    'euler'); ``max_steps`` and ``fallback`` govern the stiff retry. The risk excludes the
    label noise Δ/2. ``max_evaluations`` and ``max_seconds`` bound the drift evaluations
    and the wall time of the whole solve (fallback included): past either it raises
    :class:`~phasesgd.ode.drift.ODEBudgetExceeded`.
    """
    require_choice("mode", mode, MODES)
    require_choice("method", method, METHODS)
    if fallback is not None:
        require_choice("fallback", fallback, SCIPY_SOLVERS)
    for name, value in (("delta", delta), ("kappa", kappa)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if d is not None:
        require_at_least("d", d, 1)
    require_nonnegative("weight_decay", weight_decay)
    require_at_least("batch_size", batch_size, 1)
    require_positive("rtol", rtol)
    require_positive("atol", atol)
    if second_layer_lr is not None:
        require_nonnegative("second_layer_lr", second_layer_lr)
    if step_size is not None:
        require_positive("step_size", step_size)
    if max_evaluations is not None:
        require_at_least("max_evaluations", max_evaluations, 1)
    if max_seconds is not None:
        require_positive("max_seconds", max_seconds)
    device = torch.device(device) if device is not None else (Q0.device if isinstance(Q0, Tensor) else torch.device("cpu"))
    Q0t, M0t, Pt = (_tensor(n, v, dtype, device) for n, v in (("Q0", Q0), ("M0", M0), ("P", P)))
    a0 = None if second_layer is None else _tensor("second_layer", second_layer, dtype, device)
    a_star = teacher_second_layer
    a_star = None if a_star is None else _tensor("teacher_second_layer", a_star, dtype, device).reshape(-1)
    _check_shapes(Q0t, M0t, Pt, a0, a_star)
    g0 = _tensor("gamma0", gamma0, dtype, device)
    if not bool((g0 > 0).all()):
        raise ValueError(f"gamma0 must be > 0 (every entry), got {gamma0!r}")
    delta_noise = _tensor("noise", noise, dtype, device)
    if not bool((delta_noise >= 0).all()):
        raise ValueError(f"noise must be >= 0 (the label-noise variance Δ), got {noise!r}")
    t = _times(t_eval, dtype, device)

    p, k = Q0t.shape[-1], Pt.shape[-1]
    try:  # numpy's version: torch's imports sympy on first use (~0.4 s)
        a_batch = () if a0 is None else a0.shape[:-1]
        batch = np.broadcast_shapes(Q0t.shape[:-2], M0t.shape[:-2], g0.shape, delta_noise.shape, a_batch)
    except ValueError:
        raise ValueError(
            f"batch shapes do not broadcast: Q0 {tuple(Q0t.shape[:-2])}, M0 {tuple(M0t.shape[:-2])}, gamma0 {tuple(g0.shape)}, "
            f"noise {tuple(delta_noise.shape)}, second_layer {None if a0 is None else tuple(a0.shape[:-1])}"
        ) from None
    trained = second_layer_lr is not None
    a0 = torch.ones(p, dtype=dtype, device=device) if a0 is None else a0
    scaling = Scaling(kappa=kappa, delta=delta, theta=theta)
    coeff = prefactors(mode, scaling, g0.expand(batch) if g0.ndim else float(g0), p, d, second_layer_lr)
    fields = FieldActivations(get_activation(student_activation), get_activation(teacher_activation), p)
    drift = OrderParameterDrift(
        Pt, fields, coeff,
        noise=delta_noise.expand(batch) if delta_noise.ndim else float(delta_noise),
        second_layer=None if trained else a0.expand(*batch, p),
        teacher_second_layer=a_star, train_second_layer=trained,
        weight_decay=weight_decay, batch_size=batch_size, lr_factor=lr_factor,
    )  # fmt: skip
    drift.max_evaluations = max_evaluations
    drift.deadline = None if max_seconds is None else time.monotonic() + max_seconds
    Q0t, M0t, a0 = Q0t.expand(*batch, p, p), M0t.expand(*batch, p, k), a0.expand(*batch, p)
    try:
        check_physical(covariance(Q0t, M0t, Pt), 0.0)
    except UnphysicalStateError as err:
        raise ValueError(f"Q0, M0, P: the initial overlaps are not a covariance ({err})") from None

    # Integrate from t = 0 even when the first output time is later.
    t_full = t if float(t[0]) == 0.0 else torch.cat([t.new_zeros(1), t])
    y0 = drift.pack(Q0t, M0t, a0)
    used = method
    try:
        ys = _integrate(drift, y0, t_full, method, rtol, atol, max_steps, step_size)
    except AssertionError as err:  # torchdiffeq's step budget
        if "max_num_steps" not in str(err) or fallback is None:
            raise
        message = f"{method} needed more than max_steps={max_steps} steps (stiff ODE); retrying with {fallback}"
        warnings.warn(message, stacklevel=2)
        used = fallback
        ys = _integrate(drift, y0, t_full, fallback, rtol, atol, None, None)
    ys = ys[t_full.shape[0] - t.shape[0] :].movedim(0, len(batch))  # (…, T, N)
    Q, M, a = drift.split(ys)
    if a is None:
        a = a0.unsqueeze(-2).expand(*batch, t.shape[0], p)
    risk = risk_from_overlaps(Q, M, Pt, fields.student, fields.teacher, a, a_star)
    numpy = lambda x: x.detach().cpu().numpy()  # noqa: E731
    return ODESolution(
        t=numpy(t), risk=numpy(risk), Q=numpy(Q), M=numpy(M), a=numpy(a) if trained else None,
        region=scaling.region, mode=mode, method=used, evaluations=drift.evaluations,
    )  # fmt: skip
