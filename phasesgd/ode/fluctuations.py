"""The predicted spread of a replica at finite d: the linear-noise (van Kampen) covariance of
docs/theory.md §8 beside the ODE.

To first order in the fluctuations X(t) = X̄(t) + ξ(t), with X̄ the ODE solution and ξ
Gaussian with covariance C,

    dC/dt = J C + C Jᵀ + D(X̄),   J = ∂F/∂X at X̄,

J the drift's Jacobian (:meth:`~phasesgd.ode.drift.OrderParameterDrift.jacobian`) and D the
diffusion by quadrature of the student's field-space rule
(:meth:`~phasesgd.ode.quadrature.RuleAverage.diffusion`). C is stepped exactly for J and D
frozen at the midpoint of each step (Van Loan's block exponential: stable however stiff J
is, second order in the step). C(0) = 0 gives the spread of a replica around the ODE solved
from its own initial overlaps; C(0) = Cov[X(0)] (:func:`initial_covariance`) the spread over
replicas around one ODE.

The approximation is first order. At every output time the neglected second-order part of
the drift along C's principal direction is compared with the linear one; where it exceeds
``Fluctuations.nonlinearity`` (an escape from a saddle, the symmetric plateau), the band is
marked invalid from then on (``ODESolution.band_valid``), not extended silently.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from ..infra.validation import require_at_least, require_choice, require_positive
from ..theory.field_step import CommitteeRule
from ..theory.order_parameters import risk_from_overlaps
from ..theory.physics import RunPhysics
from .drift import OrderParameterDrift
from .problem import Problem, rule_rates
from .quadrature import Quadrature, RuleAverage

INITIAL = ("gaussian", "orthonormal")


@dataclass(frozen=True)
class Fluctuations:
    """Settings of the predicted spread: ``steps`` of C over [0, t_max] (at least two per
    output interval); ``initial``: None, or the students' initialisation ('gaussian' or
    'orthonormal'), whose Cov[Ω(0)] (:func:`initial_covariance`) then starts a second C, the
    spread over replicas around one ODE, beside the first (C(0) = 0, the spread around each
    replica's own ODE); the ``nonlinearity`` ratio past which the band is marked invalid
    (see the module docstring)."""

    steps: int = 200
    initial: str | None = None
    nonlinearity: float = 0.1

    def __post_init__(self) -> None:
        require_at_least("fluctuations.steps", self.steps, 1)
        if self.initial is not None:
            require_choice("fluctuations.initial", self.initial, INITIAL)
        require_positive("fluctuations.nonlinearity", self.nonlinearity)


@dataclass(frozen=True)
class Spread:
    """The predicted standard deviations at the output times, batch axes first, around each
    replica's own ODE (C(0) = 0): ``Q`` (…, T, p, p), ``M`` (…, T, p, k), ``risk`` (…, T),
    ``a`` (…, T, p) when trained, ``covariance`` C (…, T, N, N) of the packed state; with
    ``Fluctuations.initial``, ``total`` holds the same over replicas (C(0) = Cov[X(0)]).
    ``valid`` (T,): the band holds (module docstring) at every batch element;
    ``nonlinearity`` (…, T) the ratio it was judged by."""

    Q: np.ndarray
    M: np.ndarray
    risk: np.ndarray
    a: np.ndarray | None
    covariance: np.ndarray
    valid: np.ndarray
    nonlinearity: np.ndarray
    total: Spread | None = None


def initial_covariance(P: Tensor, p: int, d: int, init: str, trained: bool = False) -> Tensor:
    """Cov[X(0)] (N, N) of the packed X = (Q, M[, a]) over students whose rows are uniform on
    the sphere of radius √d ('gaussian': independent rows; 'orthonormal': an orthonormal
    frame), the teacher (P) fixed: Var Q_jl = 1/d off the diagonal for independent rows (0 for
    a frame; Q_jj = 1), Cov(M_jr, M_ls) = δ_jl P_rs/d, and no other covariance (each follows
    from E[v_j v_lᵀ] = δ_jl I/d for the unit rows v and a sign flip of one row)."""
    k = P.shape[-1]
    N = p * p + p * k + (p if trained else 0)
    C = P.new_zeros(N, N)
    if init == "gaussian":
        for j in range(p):
            for l in range(p):  # noqa: E741 (the theory's index)
                if j != l:
                    C[j * p + l, j * p + l] = C[j * p + l, l * p + j] = 1.0 / d
    for j in range(p):
        block = slice(p * p + j * k, p * p + (j + 1) * k)
        C[block, block] = P / d
    return C


def _diffusion_rates(problem: Problem, physics: RunPhysics, quadrature: Quadrature) -> RuleAverage:
    """The quadrature of the run's rule for D: the student's own, or the committee's."""
    rates = problem.drift.rule_rates
    if rates is not None:
        return rates
    fields = problem.fields
    rule = CommitteeRule(fields.student, fields.teacher, physics.d, physics.weight_decay, physics.second_layer_lr)
    if np.ndim(physics.gamma0):
        raise ValueError("fluctuations take one gamma0 (the quadrature's γ), got an array")
    a_star = problem.a_star if problem.a_star is not None else problem.P.new_ones(problem.P.shape[-1])
    return rule_rates(replace(physics, field_rule=rule), fields, a_star, float(np.asarray(physics.gamma0)), quadrature)


def _step_covariance(C: Tensor, J: Tensor, D: Tensor, h: float) -> Tensor:
    """C after a step h with J, D frozen: e^{Jh} C e^{Jᵀh} + ∫₀ʰ e^{Js} D e^{Jᵀs} ds, the
    integral by Van Loan's block exponential of [[−J, D], [0, Jᵀ]] h."""
    N = J.shape[-1]
    block = torch.zeros(*J.shape[:-2], 2 * N, 2 * N, dtype=J.dtype, device=J.device)
    block[..., :N, :N], block[..., :N, N:], block[..., N:, N:] = -J, D, J.transpose(-1, -2)
    F = torch.linalg.matrix_exp(block * h)
    E = F[..., N:, N:].transpose(-1, -2)  # e^{Jh}
    noise = E @ F[..., :N, N:]
    noise = (noise + noise.transpose(-1, -2)) / 2
    return E @ C @ E.transpose(-1, -2) + noise


def _grid(t_full: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Step ends (G,) containing every output time, at least two steps per output interval and
    about ``steps`` over [0, t_max]; and the index of each output time in it."""
    ends, outputs = [t_full[:1]], [0]
    span = float(t_full[-1] - t_full[0])
    for a, b in zip(t_full[:-1], t_full[1:]):
        pieces = max(2, math.ceil(steps * float(b - a) / span)) if span > 0 else 2
        ends.append(torch.linspace(float(a), float(b), pieces + 1, dtype=t_full.dtype, device=t_full.device)[1:])
        outputs.append(outputs[-1] + pieces)
    return torch.cat(ends), torch.tensor(outputs)


def _state(drift: OrderParameterDrift, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    Q, M, a = drift.unpack(y)
    return (Q + Q.transpose(-1, -2)) / 2, M, drift.P, a


def _risk_gradient(problem: Problem, y: Tensor) -> Tensor:
    """∂R/∂X (…, N) of the packed state, by central differences (R reads Q symmetrised)."""
    drift, fields = problem.drift, problem.fields
    N = y.shape[-1]
    h = y.abs().clamp_min(1.0) * 1e-6
    E = torch.eye(N, dtype=y.dtype, device=y.device).reshape(N, *[1] * (y.ndim - 1), N) * h

    def risk(z: Tensor) -> Tensor:
        Q, M, P, a = _state(drift, z)
        return risk_from_overlaps(Q, M, P, fields.student, fields.teacher, a, problem.a_star)

    return ((risk(y + E) - risk(y - E)) / (2 * h.movedim(-1, 0))).movedim(0, -1)


def _nonlinearity(drift: OrderParameterDrift, t: Tensor, y: Tensor, C: Tensor, J: Tensor) -> Tensor:
    """|F(X̄+σv) + F(X̄−σv) − 2F(X̄)| / (2|J σv|) along C's principal direction v (sd σ): the
    neglected second-order drift against the linear one, per batch element."""
    values, vectors = torch.linalg.eigh(C)
    sigma_v = vectors[..., :, -1] * values[..., -1].clamp_min(0.0).sqrt()[..., None]
    if not bool((sigma_v != 0).any()):
        return torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
    f = drift._packed_rates(t, torch.stack([y + sigma_v, y - sigma_v, y]))
    second = (f[0] + f[1] - 2 * f[2]).norm(dim=-1)
    first = 2 * (J @ sigma_v[..., None])[..., 0].norm(dim=-1)
    return second / first.clamp_min(torch.finfo(y.dtype).tiny)


def fluctuation_grid(t_full: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """The times the mean is solved at for the spread: the step ends of :func:`_grid` and their
    midpoints, interleaved (2G − 1,), and the index of each output time among the ends."""
    ends, outputs = _grid(t_full, steps)
    mids = (ends[1:] + ends[:-1]) / 2
    return torch.cat([torch.stack([ends[:-1], mids], -1).flatten(), ends[-1:]]), outputs


def predict_spread(
    problem: Problem, drift: OrderParameterDrift, ys: Tensor, outputs: Tensor, settings: Fluctuations
) -> Spread:
    """The :class:`Spread` along the mean path ``ys`` (2G − 1, …, N), solved at
    :func:`fluctuation_grid`'s times, C stepped from end to end with J and D at the midpoints
    (module docstring). ``drift`` is the problem's (or it budgeted)."""
    physics = problem.physics
    if physics.d is None:
        raise ValueError("fluctuations need d (the spread is a finite-d effect): set physics.d")
    rates = _diffusion_rates(problem, physics, problem.quadrature)
    times, _ = fluctuation_grid(problem.t_full, settings.steps)
    N, batch = ys.shape[-1], ys.shape[1:-1]
    C = ys.new_zeros(*batch, N, N)
    if settings.initial is not None:  # the second C, from Cov[X(0)], on a leading axis
        C0 = initial_covariance(problem.P, problem.fields.p, physics.d, settings.initial, problem.trained)
        C = torch.stack([C, C0.expand(*batch, N, N)])
    covariances = [C]
    for i in range(0, len(times) - 1, 2):
        t_mid, y_mid = times[i + 1], ys[i + 1]
        J = drift.jacobian(t_mid, y_mid)
        D = rates.diffusion(t_mid, _state(drift, y_mid), drift.noise, _factor(drift, t_mid, y_mid))
        C = _step_covariance(C, J, D, float(times[i + 2] - times[i]))
        covariances.append(C)
    Cs = torch.stack([covariances[int(o)] for o in outputs])  # (T_full, [2,] …, N, N) at the output times
    if settings.initial is not None:
        Cs = Cs.movedim(1, 0)  # (2, T_full, …, N, N)
    ys_out = ys[2 * outputs]
    own = Cs if settings.initial is None else Cs[0]
    ratio = torch.stack(
        [
            _nonlinearity(drift, problem.t_full[i], ys_out[i], own[i], drift.jacobian(problem.t_full[i], ys_out[i]))
            for i in range(len(outputs))
        ]
    )
    keep = problem.t_full.shape[0] - problem.t.shape[0]
    spread = _spread(problem, ys_out[keep:], own[keep:], ratio[keep:], settings)
    if settings.initial is None:
        return spread
    return replace(spread, total=_spread(problem, ys_out[keep:], Cs[1, keep:], ratio[keep:], settings))


def _factor(drift: OrderParameterDrift, t: Tensor, y: Tensor) -> Tensor | None:
    return None if drift.lr_factor is None else torch.as_tensor(drift.lr_factor(t)).to(y)


def _spread(problem: Problem, ys: Tensor, Cs: Tensor, ratio: Tensor, settings: Fluctuations) -> Spread:
    p, k = problem.fields.p, problem.P.shape[-1]
    variance = Cs.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)  # (T, …, N)
    sd = variance.sqrt()
    grad = _risk_gradient(problem, ys)
    risk_var = (grad[..., None, :] @ Cs @ grad[..., :, None])[..., 0, 0].clamp_min(0.0)
    lead = len(problem.batch)
    first = lambda x: x.movedim(0, lead).detach().cpu().numpy()  # noqa: E731 (T first → batch first)
    Q = sd[..., : p * p].reshape(*sd.shape[:-1], p, p)
    M = sd[..., p * p : p * p + p * k].reshape(*sd.shape[:-1], p, k)
    a = sd[..., p * p + p * k :] if problem.trained else None
    bad = (ratio > settings.nonlinearity).reshape(ratio.shape[0], -1).any(-1)
    valid = ~(torch.cumsum(bad.to(torch.int64), 0) > 0)  # invalid from the first failure on
    return Spread(
        Q=first(Q),
        M=first(M),
        risk=first(risk_var.sqrt()),
        a=None if a is None else first(a),
        covariance=first(Cs),
        valid=valid.cpu().numpy(),
        nonlinearity=first(ratio),
    )


def lyapunov(J: Tensor, D: Tensor) -> Tensor:
    """The stationary covariance at a stable fixed point: C with J C + C Jᵀ + D = 0 (§8), by
    SciPy's Bartels–Stewart solver, for one (N, N) pair; ValueError unless J is stable."""
    eigenvalues = torch.linalg.eigvals(J)
    if bool((eigenvalues.real >= 0).any()):
        raise ValueError(
            f"no stationary covariance: J has an eigenvalue with real part {float(eigenvalues.real.max()):.3g} >= 0 "
            "(not a stable fixed point)"
        )
    C = scipy.linalg.solve_continuous_lyapunov(J.cpu().numpy(), -D.cpu().numpy())
    return torch.as_tensor((C + C.T) / 2, dtype=J.dtype, device=J.device)


def stationary_covariance(problem: Problem, y: Tensor) -> Tensor:
    """The Lyapunov covariance at the state y (N,) of ``problem`` (a stable fixed point, e.g. a
    plateau with label noise)."""
    rates = _diffusion_rates(problem, problem.physics, problem.quadrature)
    t = problem.t_full[-1]
    drift = problem.drift
    J = drift.jacobian(t, y)
    D = rates.diffusion(t, _state(drift, y), drift.noise, _factor(drift, t, y))
    return lyapunov(J, D)


def spread_seconds(problem: Problem, settings: Fluctuations) -> float:
    """The wall time :func:`predict_spread` will take, from one Jacobian and one diffusion at
    the initial state, times the steps and output times that need them."""
    rates = _diffusion_rates(problem, problem.physics, problem.quadrature)
    drift, t, y = problem.drift, problem.t_full[0], problem.y0
    start = time.perf_counter()
    drift.jacobian(t, y)
    jacobian = time.perf_counter() - start
    rates.diffusion(t, _state(drift, y), drift.noise, _factor(drift, t, y))
    diffusion = time.perf_counter() - start - jacobian
    steps = len(_grid(problem.t_full, settings.steps)[0]) - 1
    return steps * (jacobian + diffusion) + problem.t_full.shape[0] * jacobian
