"""Right-hand side of the order-parameter ODEs (docs/theory.md §4–§5).

With weights w_c = −a_c/p (student c) and a*_c/k (teacher c), the error is
e = f* − f = Σ_c w_c σ_c(λ_c), and (c running over all n = p + k fields)

    Φ_jr = Σ_c w_c I3[j, p+r, c],   Ψ_jl = Σ_c w_c I3[j, l, c],   Υ_jl = Σ_cd w_c w_d I4[j, l, c, d],

(Φ and Ψ are the two blocks of T = Σ_c w_c I3[·, ·, c]; T and Υ come contracted from
:mod:`phasesgd.theory.integrals.weighted`, never as whole I3/I4 tensors)

    dM_jr/dt = c1 a_j Φ_jr − c1 λ_wd M_jr
    dQ_jl/dt = c1 (a_j Ψ_jl + a_l Ψ_lj) + (c2/B) a_j a_l (Υ_jl + Δ J2_jl) − 2 c1 λ_wd Q_jl
               + c_x a_j a_l v_jᵀ Ω⁺ v_l,   v_j = (Ψ_j1 … Ψ_jp, Φ_j1 … Φ_jk)   (B > 1, finite mode)
    da_j/dt  = c_a Σ_c w_c I2[j, c]                      (trained second layer only)

with c1 = τγ/(pd), c2 = τγ²/(p²d), c_a = τγ_a0/(pd) (γ_a = γ_a0/d), B the mini-batch
size and λ_wd the weight decay of :class:`phasesgd.sgd.networks.CommitteeStudent`; the
cross term of two samples of a mini-batch has c_x = c2 (1 − 1/B)/d (docs/theory.md §8; 0 in
the d → ∞ equations). These are τ times the expected increment of one SGD step of that code,
up to O(n/d) terms (|x|²/d = 1 and the (γλ_wd/(pd))² part of weight decay).

A student without closed forms has its rates by quadrature of its field-space rule instead
(``rule_rates``, :class:`phasesgd.ode.quadrature.RuleAverage`), with the same packing,
guards and Jacobian. A learning-rate schedule γ → γ g(t) multiplies c1 by
g(t) and c2 by g(t)²; the second layer's rate is not scheduled (as in the simulation).

Everything is batched over leading axes (many initial conditions or learning rates at
once), follows the device and dtype of the state, and loops over nothing but chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import torch
from torch import Tensor

from ..theory.integrals import FieldActivations, covariance, i2, i3_weighted, j2, upsilon
from ..theory.scaling import Region, Scaling, exact

Mode = Literal["finite", "asymptotic"]
MODES = ("finite", "asymptotic")
LrFactor = Callable[[Tensor], Tensor]

# Numbers the Υ sum (docs/theory.md §4) holds at once: 2^25 float64 = 256 MiB; it is
# computed in chunks of (j, l) pairs below that (see :func:`phasesgd.theory.integrals.upsilon`).
MAX_I4_ENTRIES = 2**25


class UnphysicalStateError(RuntimeError):
    """The solution left the physical region (Ω not positive semi-definite, or NaN)."""


class ODEBudgetExceeded(RuntimeError):
    """A solve used more drift evaluations or wall time than it was given."""


@dataclass(frozen=True)
class Integrals:
    """The contracted integrals of the drift: T = Σ_c w_c I3[·,·,c] and Υ (docs/theory.md §4),
    with the numbers Υ may hold at once. Passed to the drift whole, so that a benchmark can
    put a dense-tensor baseline in their place."""

    weighted_i3: Callable[[Tensor, FieldActivations, Tensor], Tensor] = i3_weighted
    upsilon: Callable[..., Tensor] = upsilon
    max_entries: int = MAX_I4_ENTRIES


# ----- prefactors (docs/theory.md §5) ---------------------------------------------------------


@dataclass(frozen=True)
class Prefactors:
    """c1 = τγ/(pd) (I3 and weight-decay terms), c2 = τγ²/(p²d) (I4 and noise terms),
    c_a = τγ_a0/(pd) (second layer) and c_x = c2 (1 − 1/B)/d (the mini-batch cross term),
    all at g(t) = 1. c1, c2 may be tensors (one γ0 per
    batch element)."""

    drift: float | Tensor
    noise: float | Tensor
    readout: float = 0.0
    cross: float | Tensor = 0.0


def finite_prefactors(
    scaling: Scaling, gamma0: float | Tensor, p: int, d: int, second_layer_lr: float | None = None
) -> Prefactors:
    """The finite-size ODE: c1, c2, c_a at the run's γ = γ0 d^(−δ), p, d and τ = d^(1+ϑ)."""
    tau = scaling.steps_per_unit_time(d)
    readout = 0.0 if second_layer_lr is None else tau * second_layer_lr / (p * d)
    return Prefactors(scaling.drift_prefactor(gamma0, p, d), scaling.noise_prefactor(gamma0, p, d), readout)


def _limit(coefficient: float | Tensor, exponent: Fraction, term: str, scaling: Scaling) -> float | Tensor:
    """lim_{d→∞} coefficient · d^exponent: the coefficient, 0, or a refusal if it diverges."""
    if exponent < 0:
        return 0.0 * coefficient
    if exponent == 0:
        return coefficient
    raise ValueError(
        f"theta={scaling.time_exponent:g}: the {term} term grows as d^{float(exponent):g} at "
        f"(kappa={scaling.kappa}, delta={scaling.delta}), so it has no d → ∞ limit; use a smaller "
        "theta or mode='finite'"
    )


def asymptotic_prefactors(
    scaling: Scaling, gamma0: float | Tensor, p: int, d: int | None = None, second_layer_lr: float | None = None
) -> Prefactors:
    """The d → ∞ limit of the prefactors, with p = p0 d^κ:

    c1 = γ0 d^(ϑ−δ−κ)/p0,  c2 = (γ0/p0)² d^(ϑ−2δ−2κ),  c_a = γ_a0 d^(ϑ−κ)/p0.

    At the region's ϑ: perfect (ϑ = κ+δ): c1 = γ0/p0, c2 → 0; plateau (ϑ = 0 = κ+δ):
    c1 = γ0/p0, c2 = (γ0/p0)²; bad (ϑ = 2(κ+δ)): c1 → 0 (M frozen), c2 = (γ0/p0)².
    ``d`` is needed only for p0 = p d^(−κ) when κ ≠ 0.
    """
    kappa, delta = exact(scaling.kappa), exact(scaling.delta)
    theta = scaling.exact_time_exponent
    if kappa != 0 and d is None:
        raise ValueError(
            f"d is required in asymptotic mode when kappa != 0 (p0 = p d^(-kappa)), got kappa={scaling.kappa}"
        )
    p0 = p if kappa == 0 else p * float(d) ** (-float(kappa))
    c1 = _limit(gamma0 / p0, theta - delta - kappa, "drift (I3)", scaling)
    c2 = _limit((gamma0 / p0) ** 2, theta - 2 * delta - 2 * kappa, "noise (I4)", scaling)
    ca = 0.0 if second_layer_lr is None else _limit(second_layer_lr / p0, theta - kappa, "second-layer", scaling)
    return Prefactors(c1, c2, ca)


def prefactors(
    mode: Mode,
    scaling: Scaling,
    gamma0: float | Tensor,
    p: int,
    d: int | None = None,
    second_layer_lr: float | None = None,
) -> Prefactors:
    """c1, c2, c_a of ``mode`` ('finite' or 'asymptotic'); refuses the no-ODE region."""
    if scaling.region is Region.NO_ODE:
        raise ValueError(
            f"(kappa={scaling.kappa}, delta={scaling.delta}) lies in the no-ODE region "
            "(-delta >= kappa + 1/2, docs/theory.md §5): "
            "SGD does not concentrate there and no deterministic limit (ODE) exists"
        )
    if mode == "finite":
        if d is None:
            raise ValueError("d is required in mode='finite' (the finite-size ODE uses the actual γ, p, d)")
        return finite_prefactors(scaling, gamma0, p, d, second_layer_lr)
    if mode == "asymptotic":
        return asymptotic_prefactors(scaling, gamma0, p, d, second_layer_lr)
    raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")


# ----- the expectations of §4 -------------------------------------------------------------


def error_weights(a: Tensor, a_star: Tensor) -> Tensor:
    """w = (−a/p, a*/k), shape (…, n), so that e = f* − f = Σ_c w_c σ_c(λ_c)."""
    p, k = a.shape[-1], a_star.shape[-1]
    return torch.cat([-a / p, a_star.expand(*a.shape[:-1], k) / k], -1)


# ----- positivity guard -----------------------------------------------------------------


def check_physical(omega: Tensor, t: float | Tensor, jitter: float = 1e-6) -> None:
    """Raise :class:`UnphysicalStateError` unless Ω is positive semi-definite.

    Ω becomes singular when students copy teachers (perfect learning), so the test is
    Cholesky of Ω + jitter·max(diag Ω)·I: only a clearly negative eigenvalue fails (round-off
    near a singular Ω reaches a few 1e-8 relative in the perfect region).
    """
    if not torch.isfinite(omega).all():
        raise UnphysicalStateError(f"non-finite order parameters at t={float(t):.6g}")
    scale = omega.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0)[..., None, None]
    eye = torch.eye(omega.shape[-1], dtype=omega.dtype, device=omega.device)
    _, info = torch.linalg.cholesky_ex(omega + jitter * scale * eye)
    if bool((info != 0).any()):
        lowest = torch.linalg.eigvalsh(omega).amin(-1)
        bad = int(torch.argmin(lowest.reshape(-1)))
        raise UnphysicalStateError(
            f"Ω = [[Q, M], [Mᵀ, P]] not positive definite at t={float(t):.6g}; smallest eigenvalue "
            f"{float(lowest.reshape(-1)[bad]):.3e} (batch element {bad}); the solution left the physical "
            "region: lower rtol/atol or gamma0, or use a stiff method"
        )


# ----- the right-hand side ------------------------------------------------------------------


class OrderParameterDrift:
    """dy/dt of the packed state y = (Q, M[, a]) flattened to (…, p² + pk [+ p]).

    ``coefficients`` holds c1, c2, c_a (scalars or batch-shaped tensors), ``noise`` Δ
    (scalar or batch-shaped). If ``second_layer_lr`` was used to build c_a, pass
    ``train_second_layer=True``: a then joins the state; otherwise a is the fixed
    ``second_layer`` (default ones). Call it as ``drift(t, y)`` (torchdiffeq's form) or
    use :meth:`rates` on (Q, M, a) directly.
    """

    def __init__(
        self,
        P: Tensor,
        fields: FieldActivations,
        coefficients: Prefactors,
        *,
        noise: float | Tensor = 0.0,
        second_layer: Tensor | None = None,
        teacher_second_layer: Tensor | None = None,
        train_second_layer: bool = False,
        weight_decay: float = 0.0,
        batch_size: int = 1,
        lr_factor: LrFactor | None = None,
        integrals: Integrals = Integrals(),
        rule_rates: Any = None,
    ) -> None:
        self.P, self.fields = P, fields
        self.p, self.k = fields.p, P.shape[-1]
        like = dict(dtype=P.dtype, device=P.device)
        self.c1 = torch.as_tensor(coefficients.drift, **like)
        self.c2 = torch.as_tensor(coefficients.noise, **like) / batch_size
        self.cx = torch.as_tensor(coefficients.cross, **like)
        self.has_cross = bool((self.cx != 0).any())
        # decided once, on the host: c1 = 0 (bad learning) drops the I3 terms, c2 = 0 (perfect) the I4 terms
        self.has_drift, self.has_noise = bool((self.c1 != 0).any()), bool((self.c2 != 0).any())
        self.ca = float(coefficients.readout)
        self.noise = torch.as_tensor(noise, **like)
        ones = torch.ones(self.p + self.k, **like)
        self.a = ones[: self.p] if second_layer is None else torch.as_tensor(second_layer).to(**like)
        self.a_star = (
            ones[self.p :] if teacher_second_layer is None else torch.as_tensor(teacher_second_layer).to(**like)
        )
        self.train_second_layer = train_second_layer
        self.weight_decay = float(weight_decay)
        self.lr_factor = lr_factor
        self.integrals = integrals
        self.rule_rates = rule_rates

    # packing of the state ------------------------------------------------------------
    def pack(self, Q: Tensor, M: Tensor, a: Tensor | None = None) -> Tensor:
        parts = [Q.flatten(-2), M.flatten(-2)] + ([a] if self.train_second_layer else [])
        return torch.cat(parts, -1)

    def split(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(Q, M, a) from packed states of any leading shape; a is None unless trained."""
        p, k, batch = self.p, self.k, y.shape[:-1]
        Q = y[..., : p * p].reshape(*batch, p, p)
        M = y[..., p * p : p * p + p * k].reshape(*batch, p, k)
        return Q, M, (y[..., p * p + p * k :] if self.train_second_layer else None)

    def unpack(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(Q, M, a) of one state (…, N), with the fixed second layer when a is not trained."""
        Q, M, a = self.split(y)
        return Q, M, self.a.expand(*y.shape[:-1], self.p) if a is None else a

    # the equations --------------------------------------------------------------------
    def _batched(self, c: Tensor, extra: int) -> Tensor:
        """A scalar or batch-shaped coefficient, broadcastable against (…, *extra axes)."""
        return c.reshape(*c.shape, *([1] * extra))

    def rates(self, t: Tensor, Q: Tensor, M: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(dQ/dt, dM/dt, da/dt or None) of docs/theory.md §4 at time t (see the module docstring)."""
        p = self.p
        factor = None if self.lr_factor is None else torch.as_tensor(self.lr_factor(t)).to(Q)
        if self.rule_rates is not None:
            return self.rule_rates.rates(t, (Q, M, self.P, a), self.noise, factor)
        c1, c2, cx = self._batched(self.c1, 2), self._batched(self.c2, 2), self._batched(self.cx, 2)
        if factor is not None:  # γ → γ g(t): c1 ∝ g, c2 ∝ g²
            c1, c2, cx = c1 * factor, c2 * factor * factor, cx * factor * factor
        omega = covariance(Q, M, self.P)
        w = error_weights(a, self.a_star)
        dQ, dM = torch.zeros_like(Q), torch.zeros_like(M)
        T = self.integrals.weighted_i3(omega, self.fields, w) if self.has_drift or self.has_cross else None
        if self.has_drift:  # c1 = 0 (bad learning): M frozen, no I3 terms
            aPsi = a[..., :, None] * T[..., :p]
            dM, dQ = a[..., :, None] * T[..., p:], aPsi + aPsi.transpose(-1, -2)
            if self.weight_decay:
                dM, dQ = dM - self.weight_decay * M, dQ - 2 * self.weight_decay * Q
            dM, dQ = c1 * dM, c1 * dQ
        if self.has_noise:  # c2 = 0 (perfect learning): no I4 or noise terms
            Ups = self.integrals.upsilon(omega, self.fields, w, max_entries=self.integrals.max_entries)
            noise = self._batched(self.noise, 2) * j2(omega, self.fields)
            dQ = dQ + c2 * a[..., :, None] * a[..., None, :] * (Ups + noise)
        if self.has_cross:  # T's rows are the v_j of the cross term
            aT = a[..., :, None] * T
            dQ = dQ + cx * (aT @ torch.linalg.pinv(omega, hermitian=True) @ aT.transpose(-1, -2))
        da = None
        if self.train_second_layer:
            da = self.ca * (i2(omega, self.fields)[..., :p, :] @ w[..., :, None])[..., 0]
        return dQ, dM, da

    def _packed_rates(self, t: Tensor, y: Tensor) -> Tensor:
        Q, M, a = self.unpack(y)
        # Q is symmetric on every solution; symmetrising makes a perturbation of Q_jl and
        # of Q_lj act alike (finite-difference Jacobian), whichever triangle a sum reads.
        return self.pack(*self.rates(t, (Q + Q.transpose(-1, -2)) / 2, M, a))

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        dy = self._packed_rates(t, y)
        if not torch.isfinite(dy).all():
            Q, M, _ = self.unpack(y)
            check_physical(covariance(Q, M, self.P), t)  # names the cause if Ω left the region
            raise UnphysicalStateError(f"non-finite drift at t={float(t):.6g}")
        return dy

    def callback_step(self, t: Tensor, y: Tensor, dt: Tensor) -> None:
        """torchdiffeq hook, called on every accepted state: the positivity guard."""
        Q, M, _ = self.unpack(y)
        check_physical(covariance(Q, M, self.P), t)

    def jacobian(self, t: Tensor, y: Tensor) -> Tensor:
        """∂(dy/dt)/∂y of every batch element, shape (…, N, N), by forward differences.

        For the implicit (stiff) solvers. Batch elements are independent, so all the
        perturbed states of a chunk of columns go through the drift as one batch. The
        drift reads Q through (Q + Qᵀ)/2, so the columns of Q_jl and Q_lj are equal: only
        j ≤ l are computed, p(p − 1)/2 fewer drift columns.
        """
        N, lead = y.shape[-1], y.shape[:-1]
        f0 = self._packed_rates(t, y)
        h = y.abs().clamp_min(1.0) * math.sqrt(torch.finfo(y.dtype).eps)  # (…, N)
        source = self._shared_columns(N, y.device)
        unique = source.unique()
        per_column = max(1, math.prod(lead)) * self.numbers_per_state()
        chunk = max(1, self.integrals.max_entries // per_column)
        columns = []
        for s in range(0, unique.numel(), chunk):
            cols = unique[s : s + chunk]
            E = torch.nn.functional.one_hot(cols, N).to(y).reshape(-1, *[1] * len(lead), N)  # (c, 1…, N)
            hs = h[..., cols].movedim(-1, 0)[..., None]  # (c, …, 1)
            columns.append((self._packed_rates(t, y + E * hs) - f0) / hs)
        computed = torch.cat(columns, 0)  # (unique, …, N_out), in the order of ``unique``
        return computed[torch.searchsorted(unique, source)].movedim(0, -1)  # (…, N_out, N_in)

    def numbers_per_state(self) -> int:
        """Numbers one state's drift holds at once: the Υ sum's, or the quadrature's."""
        if self.rule_rates is not None:
            return self.rule_rates.numbers_per_state()
        return self.p**2 * (self.p + self.k) ** 2 * 3

    def jacobian_columns(self, N: int) -> int:
        """Drift columns one :meth:`jacobian` evaluates for a state of N numbers."""
        return N - self.p * (self.p - 1) // 2

    def _shared_columns(self, N: int, device: torch.device) -> Tensor:
        """For each state coordinate, the one whose Jacobian column it shares: Q_lj → Q_jl."""
        source = torch.arange(N, device=device)
        j, l = torch.tril_indices(self.p, self.p, offset=-1, device=device)
        source[j * self.p + l] = l * self.p + j
        return source
