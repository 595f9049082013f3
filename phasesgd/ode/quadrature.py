"""Frozen-sample quadrature of a field-space rule (docs/theory.md §8): the drift of any
student, and the diffusion of every student.

S points (ζ_s, ξ_s), standard normal in n + 1 dimensions (scrambled Sobol points through the
normal quantile), are drawn once for a whole solve. At Ω they become the fields
(λ, λ*)_s = Ω^(1/2) ζ_s and the label noise ξ_s, so every average below is a deterministic,
smooth function of Ω. For one sample the rule's step w_j ← s w_j + g_j x/√d
(:class:`~phasesgd.theory.field_step.FieldStep`, g_j = κ√d c_j for a batch of one) moves

    ΔQ_jl = (s² − 1) Q_jl + s (g_l λ_j + g_j λ_l)/d + g_j g_l u/d,
    ΔM_jr = (s − 1) M_jr + s g_j λ*_r/d,       Δa_j = κ_a Δa_j,

with u = |x|²/d, replaced by its mean 1 as in the closed forms. A step on B samples averages
B of these, except in the quadratic term, where the product of two different samples'
increments has the mean (1 − 1/B) v_jᵀ Ω⁺ v_l/d², v_j = E[g_j (λ, λ*)] (the cross term of §8).
So, per unit time (τ steps), the drift is τ E[ΔX] with the quadratic term divided by B and
the cross term added, and the diffusion is D = τ Cov[ΔX]/B, one sample's covariance (that of
the cross term is O(d⁻⁴)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..infra.validation import require_at_least
from ..theory.field_step import FieldRule, committee_readout
from ..theory.integrals import FieldActivations, covariance


@dataclass(frozen=True)
class Quadrature:
    """The frozen samples: ``points`` S (a power of two suits the Sobol sequence) and the
    ``seed`` of its scrambling. The error of an average falls like S^(−1) for smooth
    integrands and S^(−½) at worst (docs/ode.md states the measured one)."""

    points: int = 16384
    seed: int = 0

    def __post_init__(self) -> None:
        require_at_least("quadrature.points", self.points, 16)

    def samples(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """(S, n + 1) standard normal points: the fields' ζ and, last, the label noise ξ."""
        engine = torch.quasirandom.SobolEngine(n + 1, scramble=True, seed=self.seed)
        u = engine.draw(self.points, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        return (math.sqrt(2.0) * torch.erfinv(2 * u - 1)).to(dtype=dtype, device=device)


def square_root(omega: Tensor) -> Tensor:
    """The symmetric square root of Ω (…, n, n), negative round-off eigenvalues set to 0:
    smooth in Ω, and defined where Ω is singular (a student that copies a teacher)."""
    values, vectors = torch.linalg.eigh(omega)
    return (vectors * values.clamp_min(0.0).sqrt()[..., None, :]) @ vectors.transpose(-1, -2)


@dataclass(frozen=True)
class Increments:
    """One sample's increments at every point: ``gains`` g (…, S, p), ``fields`` (λ, λ*)
    (…, S, n), ``shrink`` s, ``readout`` κ_a Δa (…, S, p) or None, and d."""

    gains: Tensor
    fields: Tensor
    shrink: float
    readout: Tensor | None
    dim: int


class RuleAverage:
    """The rates of a field-space ``rule`` by quadrature (the module docstring), in the form
    of :meth:`~phasesgd.ode.drift.OrderParameterDrift.rates`: the drift's right-hand side
    for a student with no closed forms, and the diffusion :meth:`diffusion` for any.

    ``gamma`` is the run's γ = γ0 d^(−δ) (one value), ``tau`` the steps per unit time;
    the labels are the teacher committee's f*(λ*) + √Δ ξ.
    """

    def __init__(
        self,
        rule: FieldRule,
        fields: FieldActivations,
        teacher_second_layer: Tensor,
        gamma: float,
        dim: int,
        tau: float,
        batch_size: int,
        quadrature: Quadrature,
    ) -> None:
        self.rule, self.activations = rule, fields
        self.a_star = teacher_second_layer
        self.gamma, self.dim, self.tau, self.batch_size = float(gamma), int(dim), float(tau), int(batch_size)
        self.quadrature = quadrature
        self._samples: Tensor | None = None

    def numbers_per_state(self) -> int:
        """Numbers one state's quadrature holds at once (for the Jacobian's chunks)."""
        p, n = self.activations.p, self.a_star.shape[-1] + self.activations.p
        return self.quadrature.points * (4 * n + 3 * p)

    def samples(self, like: Tensor) -> Tensor:
        if self._samples is None or self._samples.device != like.device:
            n = self.activations.p + self.a_star.shape[-1]
            self._samples = self.quadrature.samples(n, like.dtype, like.device)
        return self._samples

    def increments(self, t: Tensor, omega: Tensor, a: Tensor, noise: Tensor, lr_factor: Tensor | None) -> Increments:
        """The rule's step at every frozen point, for the states Ω (…, n, n) and second layers a (…, p)."""
        p = self.activations.p
        zeta = self.samples(omega)
        fields = zeta[:, :-1] @ square_root(omega).transpose(-1, -2)  # (…, S, n)
        lam, lam_star = fields[..., :p], fields[..., p:]
        batch, S = fields.shape[:-2], fields.shape[-2]
        a_star = self.a_star.expand(*batch, S, self.a_star.shape[-1]).reshape(-1, self.a_star.shape[-1])
        teacher = committee_readout(self.activations.teacher, lam_star.reshape(-1, 1, lam_star.shape[-1]), a_star)
        labels = teacher.reshape(*batch, S) + noise.sqrt()[..., None] * zeta[:, -1]
        lr = self.gamma * (1.0 if lr_factor is None else float(lr_factor))
        rows = a[..., None, :].expand(*batch, S, p).reshape(-1, p)
        step = self.rule(lam.reshape(-1, 1, p), labels.reshape(-1, 1), rows, lr)
        gains = (step.coefficients * (step.scale * math.sqrt(self.dim))).reshape(*batch, S, p)
        readout = None if step.readout is None else (step.readout * step.readout_scale).reshape(*batch, S, p)
        shrink = 1.0 if step.shrink is None else float(step.shrink)
        return Increments(gains, fields, shrink, readout, self.dim)

    def rates(
        self, t: Tensor, state: tuple[Tensor, Tensor, Tensor, Tensor], noise: Tensor, lr_factor: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(dQ/dt, dM/dt, da/dt or None) = τ × the mean increment of one step of B samples."""
        Q, M, P, a = state
        omega = covariance(Q, M, P)
        inc = self.increments(t, omega, a, noise, lr_factor)
        p, S, d, s, B = Q.shape[-1], inc.gains.shape[-2], inc.dim, inc.shrink, self.batch_size
        g, lam = inc.gains, inc.fields
        linear = torch.einsum("...sj,...sc->...jc", g, lam) / S  # E[g_j λ_c] (…, p, n): the v_j of §8
        gg = torch.einsum("...sj,...sl->...jl", g, g) / S
        dQ = (s * s - 1) * Q + s * (linear[..., :p] + linear[..., :p].transpose(-1, -2)) / d + gg / (B * d)
        if B > 1:
            cross = linear @ torch.linalg.pinv(omega, hermitian=True) @ linear.transpose(-1, -2)
            dQ = dQ + (1 - 1 / B) * cross / d**2
        dM = (s - 1) * M + s * linear[..., p:] / d
        da = None if inc.readout is None else inc.readout.mean(-2)
        tau = self.tau
        return tau * dQ, tau * dM, None if da is None else tau * da

    def diffusion(
        self, t: Tensor, state: tuple[Tensor, Tensor, Tensor, Tensor], noise: Tensor, lr_factor: Tensor | None
    ) -> Tensor:
        """D = τ Cov[ΔX]/B (…, N, N) of the packed state X = (Q, M[, a]) (§8)."""
        Q, M, P, a = state
        inc = self.increments(t, covariance(Q, M, P), a, noise, lr_factor)
        p, d, s = Q.shape[-1], inc.dim, inc.shrink
        g, lam = inc.gains, inc.fields
        gl = g[..., :, None] * lam[..., None, :]  # (…, S, p, n): g_j λ_c
        dQ = s * (gl[..., :p] + gl[..., :p].transpose(-1, -2)) / d + g[..., :, None] * g[..., None, :] / d
        parts = [dQ.flatten(-2), (s * gl[..., p:] / d).flatten(-2)]
        if inc.readout is not None:
            parts.append(inc.readout)
        X = torch.cat(parts, -1)  # (…, S, N): the fluctuating part of one sample's ΔX
        X = X - X.mean(-2, keepdim=True)
        return self.tau * (X.transpose(-1, -2) @ X) / (X.shape[-2] * self.batch_size)
