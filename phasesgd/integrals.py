"""Gaussian integrals over the local fields of student and teacher (THEORY.md §3).

Fields are ordered students first, then teachers: ``n = p + k`` and the joint
covariance is ``Ω = [[Q, M], [Mᵀ, P]]`` with shape ``(..., n, n)``. Every field index
carries its own unit's activation (σ for students, σ* for teachers). The four
integrals feed the risk (§2) and the ODE drift (§4):

- ``I2[a, b]       = E[σ_a(λa) σ_b(λb)]``                       shape ``(..., n, n)``
- ``I3[j, b, c]    = E[σ'(λj) λb σ_c(λc)]``, j a student          shape ``(..., p, n, n)``
- ``I4[j, l, c, d] = E[σ'(λj) σ'(λl) σ_c(λc) σ_d(λd)]``, j, l students
                                                                  shape ``(..., p, p, n, n)``
- ``J2[j, l]       = E[σ'(λj) σ'(λl)]``, j, l students            shape ``(..., p, p)``

Routes. Each block of index tuples (grouped by the activations involved) uses a
closed form when one is registered for its activation names, and otherwise a generic
tensor-product Gauss–Hermite quadrature (``route="generic"`` forces the latter
everywhere). Closed forms: erf, linear and relu for I2, I3 and J2 (including every
mixed pair of these three); erf and linear for I4; for relu I4 (relu students with
relu or linear c, d fields) a one-dimensional Price's-theorem integral accurate to
~1e-8 (see :func:`_relu_i4`). The generic route maps Gauss–Hermite nodes through a
semidefinite Cholesky factor of each sub-covariance, on a rule narrower than the
fields (see :func:`_scaled_hermite`); it needs smooth activations (kinks and cusps
converge only algebraically).

Two reductions keep the numerics cheap and exact:

- I3 is linear in λb. Stein's lemma on λb gives
  ``I3[j,b,c] = Ω_jb α_jc + Ω_bc β_jc`` with ``α_jc = E[σ''(λj) σ_c(λc)]`` and
  ``β_jc = E[σ'(λj) σ_c'(λc)]``, so only the (j, c) pairs need integrating.
- A linear student (σ' = 1) turns I4 into I2 of the (c, d) fields.

Everything follows the dtype and device of ``omega``; no Python loop runs over
hidden units (loops are over the ≤ 4 activation blocks and over memory chunks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from phasesgd.activations import Activation

__all__ = [
    "FieldActivations",
    "covariance",
    "has_closed_form_i2",
    "i2",
    "i3",
    "i4",
    "j2",
]

Route = Literal["auto", "generic"]
ElementwiseFn = Callable[[Tensor], Tensor]
PairFn = Callable[[Tensor, Tensor, Tensor], Tensor]
SteinFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
QuadFn = Callable[[Tensor], Tensor]

_PI = math.pi
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
# Floats held at once by one chunk of index tuples: 1 GiB of float64.
_CHUNK_ELEMENTS = 2**27
# Gauss–Legendre nodes of the one-dimensional relu-I4 path integral.
_RELU_PATH_NODES = 40
# Smallest distance 1 − t* of the path's singularity that the node placement resolves.
_RELU_PATH_FLOOR = 1e-13


@dataclass(frozen=True)
class FieldActivations:
    """Which activation each field carries, and the generic route's accuracy.

    Fields ``[:p]`` are students (σ = ``student``), fields ``[p:]`` teachers
    (σ* = ``teacher``). ``quadrature_points`` is the number of Gauss–Hermite nodes
    per dimension of the two-dimensional integrals (I2, J2 and the (j, c) pairs of
    I3); ``quadrature_points_4d`` that of the four-dimensional I4 (cost ∝ N⁴).
    ``quadrature_scale`` sets how much narrower than the fields the Gauss–Hermite
    rule is (see :func:`_scaled_hermite`); the default 0.8 is calibrated on erf.

    Measured accuracy of the defaults, relative to max |I|, for diag(Ω) in [0.5, 2]
    and correlations up to 0.97: 2-D integrals ≤ 1e-13 for erf, sigmoid and silu,
    1e-6 for tanh; I4 ≈ 2e-5 for erf, 1e-5 for sigmoid, 3e-3 for tanh, 6e-3 for silu
    (``quadrature_points_4d=26`` brings tanh and silu to ~2e-5; silu prefers a wider
    rule, ``quadrature_scale`` ≈ 1.2). Kinks (relu in a block without closed form)
    and cusps converge only algebraically (~1e-2 at 40 nodes).
    """

    student: Activation
    teacher: Activation
    p: int
    quadrature_points: int = 40
    quadrature_points_4d: int = 13
    quadrature_scale: float = 0.8

    def groups(self, n: int, device: torch.device) -> list[tuple[Activation, Tensor]]:
        """Field indices grouped by activation: one group when σ and σ* coincide."""
        if not 0 <= self.p <= n:
            raise ValueError(f"p={self.p} does not fit {n} fields")
        if self.student.name == self.teacher.name:
            return [(self.student, torch.arange(n, device=device))]
        blocks = [(self.student, torch.arange(0, self.p, device=device)),
                  (self.teacher, torch.arange(self.p, n, device=device))]
        return [(act, idx) for act, idx in blocks if idx.numel() > 0]


def covariance(q: Tensor, m: Tensor, p: Tensor) -> Tensor:
    """Ω = [[Q, M], [Mᵀ, P]] from Q (..., p, p), M (..., p, k) and P (..., k, k); P is
    broadcast over the batch axes of Q (one teacher, many students)."""
    p = p.expand(*q.shape[:-2], *p.shape[-2:])
    top = torch.cat([q, m], dim=-1)
    bottom = torch.cat([m.transpose(-1, -2), p], dim=-1)
    return torch.cat([top, bottom], dim=-2)


# ---------------------------------------------------------------------------------
# Closed forms of two-field integrals, keyed by activation names.
# Arguments are the entries (C_aa, C_bb, C_ab) of the 2×2 sub-covariance.
# ---------------------------------------------------------------------------------


def _tiny(x: Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _corr(caa: Tensor, cbb: Tensor, cab: Tensor) -> Tensor:
    """C_ab / √(C_aa C_bb), clamped to [-1, 1] against round-off."""
    return (cab / (caa * cbb).sqrt().clamp_min(_tiny(cab))).clamp(-1.0, 1.0)


def _erf_mean_prime(caa: Tensor) -> Tensor:
    """E[σ'(λa)] for σ = erf(·/√2): √(2/π) / √(1 + C_aa)."""
    return _SQRT_2_OVER_PI / (1.0 + caa).sqrt()


def _i2_erf(caa: Tensor, cbb: Tensor, cab: Tensor) -> Tensor:
    """(2/π) arcsin(C_ab / √((1+C_aa)(1+C_bb)))  (THEORY §3)."""
    return (2.0 / _PI) * torch.asin((cab / ((1.0 + caa) * (1.0 + cbb)).sqrt()).clamp(-1.0, 1.0))


def _i2_relu(caa: Tensor, cbb: Tensor, cab: Tensor) -> Tensor:
    """√(C_aa C_bb) (sin θ + (π − θ) cos θ) / (2π), cos θ = C_ab/√(C_aa C_bb)."""
    cos = _corr(caa, cbb, cab)
    theta = torch.acos(cos)
    return (caa * cbb).clamp_min(0).sqrt() * (torch.sin(theta) + (_PI - theta) * cos) / (2 * _PI)


_I2_CLOSED: dict[tuple[str, str], PairFn] = {
    ("erf", "erf"): _i2_erf,
    ("relu", "relu"): _i2_relu,
    ("linear", "linear"): lambda caa, cbb, cab: cab,
    # Stein: E[σ(a) b] = C_ab E[σ'(a)].
    ("erf", "linear"): lambda caa, cbb, cab: cab * _erf_mean_prime(caa),
    ("relu", "linear"): lambda caa, cbb, cab: cab / 2,
    # relu(b) = b/2 + |b|/2 and E[σ(a)|b|] = 0 for odd σ: half the linear value.
    ("erf", "relu"): lambda caa, cbb, cab: cab * _erf_mean_prime(caa) / 2,
}


def _stein_erf(caa: Tensor, ccc: Tensor, cac: Tensor) -> tuple[Tensor, Tensor]:
    # β = (2/π)/√Λ3, α = −C_ac β/(1+C_aa): the I3 closed form of THEORY §3 split by Stein.
    beta = (2.0 / _PI) / ((1.0 + caa) * (1.0 + ccc) - cac**2).clamp_min(_tiny(cac)).sqrt()
    return -cac * beta / (1.0 + caa), beta


def _stein_relu(caa: Tensor, ccc: Tensor, cac: Tensor) -> tuple[Tensor, Tensor]:
    # α = E[δ(a) relu(c)] = p_a(0) E[relu(c) | a = 0] = √(C_aa C_cc − C_ac²) / (2π C_aa);
    # β = E[1(a>0) 1(c>0)] = 1/4 + arcsin(ρ)/(2π).
    alpha = (caa * ccc - cac**2).clamp_min(0).sqrt() / (2 * _PI * caa.clamp_min(_tiny(caa)))
    return alpha, 0.25 + torch.asin(_corr(caa, ccc, cac)) / (2 * _PI)


def _stein_erf_linear(caa: Tensor, ccc: Tensor, cac: Tensor) -> tuple[Tensor, Tensor]:
    # α = E[σ''(a) c] = C_ac E[σ'''(a)] = −C_ac √(2/π) (1+C_aa)^(−3/2); β = E[σ'(a)].
    beta = _erf_mean_prime(caa)
    return -cac * beta / (1.0 + caa), beta


def _halve(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return pair[0] / 2, pair[1] / 2


def _zero_alpha(beta: Callable[[Tensor], Tensor]) -> SteinFn:
    """σ'' = 0 (linear student) or E[δ(a) σ_c(c)] = 0 (relu student, odd σ_c): α = 0."""
    return lambda caa, ccc, cac: (torch.zeros_like(cac), beta(ccc).expand_as(cac))


# (α, β) = (E[σ''(λa) σ_c(λc)], E[σ'(λa) σ_c'(λc)]) for (student σ, field σ_c).
_STEIN_CLOSED: dict[tuple[str, str], SteinFn] = {
    ("erf", "erf"): _stein_erf,
    ("relu", "relu"): _stein_relu,
    ("erf", "linear"): _stein_erf_linear,
    # relu(c) = c/2 + |c|/2; the |c| part vanishes against the odd σ'' and even σ'.
    ("erf", "relu"): lambda caa, ccc, cac: _halve(_stein_erf_linear(caa, ccc, cac)),
    ("linear", "linear"): _zero_alpha(lambda ccc: torch.ones_like(ccc)),
    ("linear", "erf"): _zero_alpha(_erf_mean_prime),
    ("linear", "relu"): _zero_alpha(lambda ccc: torch.full_like(ccc, 0.5)),
    # 1(a>0) = 1/2 + sign(a)/2; the sign part vanishes against odd σ_c (and linear c).
    ("relu", "linear"): _zero_alpha(lambda ccc: torch.full_like(ccc, 0.5)),
    ("relu", "erf"): _zero_alpha(lambda ccc: _erf_mean_prime(ccc) / 2),
}


def _j2_erf(caa: Tensor, cbb: Tensor, cab: Tensor) -> Tensor:
    """(2/π) / √(1 + C_aa + C_bb + C_aa C_bb − C_ab²)  (THEORY §3)."""
    return (2.0 / _PI) / ((1.0 + caa) * (1.0 + cbb) - cab**2).clamp_min(_tiny(cab)).sqrt()


_J2_CLOSED: dict[str, PairFn] = {
    "erf": _j2_erf,
    "relu": lambda caa, cbb, cab: 0.25 + torch.asin(_corr(caa, cbb, cab)) / (2 * _PI),
    "linear": lambda caa, cbb, cab: torch.ones_like(cab),
}


# ---------------------------------------------------------------------------------
# Closed forms of I4, on the 4×4 sub-covariance of (j, l, c, d).
# ---------------------------------------------------------------------------------


def _i4_erf(c: Tensor) -> Tensor:
    """(4/π²) arcsin(Λ0/√(Λ1Λ2)) / √Λ4 with a, b, c, d = j, l, c, d (THEORY §3)."""
    return _i4_erf_entries(
        *(c[..., i, i] for i in range(4)),
        c[..., 0, 1], c[..., 0, 2], c[..., 0, 3], c[..., 1, 2], c[..., 1, 3], c[..., 2, 3],
    )


def _i4_erf_entries(caa: Tensor, cbb: Tensor, ccc: Tensor, cdd: Tensor, cab: Tensor, cac: Tensor,
                    cad: Tensor, cbc: Tensor, cbd: Tensor, ccd: Tensor) -> Tensor:
    """The erf I4 of THEORY §3 from the ten covariance entries (any broadcastable shapes)."""
    l4 = (1 + caa) * (1 + cbb) - cab**2
    l0 = l4 * ccd - cbc * cbd * (1 + caa) - cac * cad * (1 + cbb) + cab * cac * cbd + cab * cad * cbc
    l1 = l4 * (1 + ccc) - cbc**2 * (1 + caa) - cac**2 * (1 + cbb) + 2 * cab * cac * cbc
    l2 = l4 * (1 + cdd) - cbd**2 * (1 + caa) - cad**2 * (1 + cbb) + 2 * cab * cad * cbd
    tiny = _tiny(l0)
    arg = (l0 / (l1 * l2).clamp_min(tiny).sqrt()).clamp(-1.0, 1.0)
    return (4.0 / _PI**2) * torch.asin(arg) / l4.clamp_min(tiny).sqrt()


def _i4_erf_rows(flat: Tensor, p: int, rows: Tensor) -> Tensor:
    """All-erf I4[rows, :, :, :] of a (B, n, n) covariance by broadcasting, shape
    (B, |rows|, p, n, n): no gather of 4×4 sub-covariances (≈10× faster than the tuple path)."""
    diag = flat.diagonal(dim1=-2, dim2=-1)
    C_j = flat[:, rows]  # (B, m, n)
    C_l = flat[:, :p]  # (B, p, n)
    return _i4_erf_entries(
        diag[:, rows, None, None, None], diag[:, None, :p, None, None],
        diag[:, None, None, :, None], diag[:, None, None, None, :],
        C_j[:, :, :p, None, None], C_j[:, :, None, :, None], C_j[:, :, None, None, :],
        C_l[:, None, :, :, None], C_l[:, None, :, None, :], flat[:, None, None, :, :],
    )


@cache
def _legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


def _relu_i4(c: Tensor) -> Tensor:
    """relu I4 = E[1(λj>0) 1(λl>0) relu(λc) relu(λd)] by a 1-D Price's-theorem integral.

    There is no elementary closed form: by Stein's lemma on λc the integral contains
    C_cd · P(all four fields > 0), the orthant probability of a 4-D Gaussian (the
    volume of a spherical tetrahedron), which is not elementary. Derivation of the
    route used here. Write g = 1(x1>0) 1(x2>0) x3⁺ x4⁺ for (x1..x4) = (λj, λl, λc, λd)
    scaled to unit variance (I4 = √(C_cc C_dd) Ĩ4 by homogeneity) with correlation R,
    and follow the path R(t) = (1 − t) I + t R, t ∈ [0, 1], which is positive
    definite for t < 1 even when R is singular (repeated indices). At t = 0 the fields
    are independent: Ĩ4(0) = 1/(8π). Price's theorem gives
    dĨ4/dt = Σ_{i<m} R_im E_t[∂_i ∂_m g], and every term but one is elementary:

    - (1,2): φ2(0,0; r12) E[x3⁺ x4⁺ | x1 = x2 = 0]: the relu I2 of a conditional
      covariance;
    - (i,m), i ∈ {1,2}, m ∈ {3,4}: φ(0) E[1(x_i'>0) 1(x_m>0) x_m'⁺ | x_i = 0], which
      Stein's lemma turns into Σ cov/√var · (1/4 + arcsin(partial corr)/(2π));
    - (3,4): the orthant probability P4(t), itself P4(0) + ∫_0^t B(s) ds with
      B = Σ_{i<m} R_im φ2(0,0; r_im) (1/4 + arcsin(ρ_{kl·im})/(2π)) (Plackett).
      Swapping the order of integration, ∫_0^1 R_34 P4(t) dt =
      R_34/16 + R_34 ∫_0^1 (1 − t) B(t) dt, so the whole result stays one 1-D integral.

    All partial correlations are those of R(t) given the two remaining fields. The
    integrand has integrable singularities where R(t) becomes singular, at
    t* = 1/(1 − λ_min(R)) ≥ 1; Gauss–Legendre in v = log(1 − t + ε), ε ≈ 1 − t*
    (floored at 1e-13), resolves them at every scale, so nearly and exactly singular
    covariances (a student aligned with a teacher, j == l, c == d) are accurate
    too. Computed in float64 whatever the input dtype, with _RELU_PATH_NODES nodes
    (half as many where ε ≥ 1e-3). Measured relative error: ≤ 1e-11 for
    well-conditioned Ω, ≤ 2e-8 for nearly singular (λ_min(R) down to 1e-13) and
    exactly singular Ω, against an independent nested quadrature (relu fields
    integrated analytically) and closed forms of the singular cases (j == l, c == d,
    all equal).
    """
    dtype = c.dtype
    c = c.to(torch.float64)
    var = torch.diagonal(c, dim1=-2, dim2=-1).clamp_min(1e-300)
    sd = var.sqrt()
    rho = (c / (sd[..., :, None] * sd[..., None, :])).clamp(-1.0, 1.0)
    lam_min = torch.linalg.eigvalsh(rho)[..., 0].clamp(0.0, 1.0)
    eps = (lam_min / (1.0 - lam_min).clamp_min(1e-300)).clamp(_RELU_PATH_FLOOR, 1.0)
    total = torch.empty_like(eps)
    # Well-conditioned tuples (the bulk, away from alignment) need half the nodes.
    easy = eps >= 1e-3
    for mask, nodes in ((easy, _RELU_PATH_NODES // 2), (~easy, _RELU_PATH_NODES)):
        if mask.any():
            part = rho[mask]
            total[mask] = 1.0 / (8 * _PI) + part[:, 2, 3] / 16 + _relu_path_integral(part, eps[mask], nodes)
    return (sd[..., 2] * sd[..., 3] * total).to(dtype)


def _relu_path_integral(rho: Tensor, eps: Tensor, nodes: int) -> Tensor:
    """∫_0^1 of _relu_i4_rate in v = log(1 − t + ε), by Gauss–Legendre (see _relu_i4)."""
    x, wq = (torch.as_tensor(a, dtype=rho.dtype, device=rho.device) for a in _legendre01(nodes))
    lo, hi = eps.log()[..., None], torch.log1p(eps)[..., None]
    ev = torch.exp(lo + (hi - lo) * x)
    w = (ev - eps[..., None]).clamp(0.0, 1.0)  # 1 − t at the nodes
    rate = _relu_i4_rate(rho[..., None, :, :], w)
    return (rate * ev * wq * (hi - lo)).sum(-1)


def _relu_i4_rate(rho: Tensor, w: Tensor) -> Tensor:
    """dĨ4/dt (+ the swapped P4 term) at 1 − t = w, for correlation ``rho`` (..., 4, 4)."""
    t = 1.0 - w
    pairs = [(i, m) for i in range(4) for m in range(i + 1, 4)]
    comp = {(i, m): tuple(q for q in range(4) if q not in (i, m)) for i, m in pairs}
    big = {pr: rho[..., pr[0], pr[1]] for pr in pairs}
    r = {pr: t * big[pr] for pr in pairs}
    # 1 − r² = (1 − t|R|)(1 + t|R|) with 1 − t|R| = (1 − |R|) + w|R|: exact as t → 1.
    gap = {pr: ((1 - big[pr].abs()) + w * big[pr].abs()) * (1 + t * big[pr].abs()) for pr in pairs}
    root = {pr: g.sqrt().clamp_min(1e-300) for pr, g in gap.items()}

    def rr(i: int, m: int) -> Tensor:
        return r[(min(i, m), max(i, m))]

    def gg(i: int, m: int) -> Tensor:
        return gap[(min(i, m), max(i, m))]

    def sq(i: int, m: int) -> Tensor:
        return root[(min(i, m), max(i, m))]

    # minor[e]: determinant of R(t) without field e (a 3×3 principal minor).
    minor = {}
    for e in range(4):
        x, k, l = (q for q in range(4) if q != e)
        det = gg(k, l) - rr(x, k) ** 2 - rr(x, l) ** 2 + 2 * rr(k, l) * rr(x, k) * rr(x, l)
        # 0 ≤ det ≤ 1 − r² of each of its pairs; clamping keeps round-off near t = 1 bounded.
        minor[e] = torch.minimum(det.clamp_min(0), torch.minimum(gg(k, l), torch.minimum(gg(x, k), gg(x, l))))
    # Partial correlation of a pair given the two other fields, and the conditional
    # bivariate orthant probability 1/4 + arcsin(ρ)/(2π).
    pcorr, orth = {}, {}
    for (p, q), (k, l) in comp.items():
        s = gg(k, l) * rr(p, q) - (
            rr(p, k) * rr(q, k) + rr(p, l) * rr(q, l) - rr(k, l) * (rr(p, k) * rr(q, l) + rr(p, l) * rr(q, k))
        )
        pcorr[(p, q)] = (s / (minor[p] * minor[q]).sqrt().clamp_min(1e-300)).clamp(-1.0, 1.0)
        orth[(p, q)] = 0.25 + torch.asin(pcorr[(p, q)]) / (2 * _PI)

    def oo(i: int, m: int) -> Tensor:
        return orth[(min(i, m), max(i, m))]

    two_pi = 2 * _PI
    # Plackett rate of the orthant probability P4.
    b = sum(big[pr] / (two_pi * root[pr]) * orth[comp[pr]] for pr in pairs)
    # (1,2): δ(x1) δ(x2) x3⁺ x4⁺.
    cos = pcorr[(2, 3)]
    relu_pair = (1 - cos**2).clamp_min(0).sqrt() + (_PI - torch.acos(cos)) * cos
    rate = big[(0, 1)] / (two_pi * root[(0, 1)]) * (minor[2] * minor[3]).sqrt() / gap[(0, 1)] * relu_pair / two_pi
    # (i,m): δ(x_i) 1(x_i') 1(x_m) x_m'⁺, expanded by Stein's lemma on x_m'.
    for i in (0, 1):
        ip = 1 - i
        for m in (2, 3):
            mp = 5 - m
            # cov(x_m', y | x_i = 0) / √var(y | x_i = 0) for y = x_i', x_m; bounded by 1.
            q1 = ((rr(mp, ip) - rr(mp, i) * rr(ip, i)) / sq(i, ip)).clamp(-1, 1)
            q2 = ((rr(mp, m) - rr(mp, i) * rr(m, i)) / sq(i, m)).clamp(-1, 1)
            q3 = sq(i, mp)
            k3 = q1 * oo(m, mp) + q2 * oo(ip, mp) + q3 * oo(ip, m)
            rate = rate + big[(i, m)] / two_pi * k3
    return rate + big[(2, 3)] * w * b


def _sign_flip(c: Tensor, field: int) -> Tensor:
    """Covariance of the fields with field ``field`` negated."""
    s = torch.ones(c.shape[-1], dtype=c.dtype, device=c.device)
    s[field] = -1.0
    return c * s[:, None] * s[None, :]


def _relu_student_i4(linear_c: bool, linear_d: bool) -> QuadFn:
    """relu students with relu or linear c, d fields: linear(x) = relu(x) − relu(−x)."""

    def kernel(c: Tensor) -> Tensor:
        out = _relu_i4(c)
        if linear_c:
            out = out - _relu_i4(_sign_flip(c, 2))
        if linear_d:
            out = out - _relu_i4(_sign_flip(c, 3))
        if linear_c and linear_d:
            out = out + _relu_i4(_sign_flip(_sign_flip(c, 2), 3))
        return out

    return kernel


# (student σ, σ_c, σ_d) -> I4 on the 4×4 sub-covariance of (j, l, c, d); blocks come
# students first, so σ_c is σ* only when σ_d is too. A linear student is handled
# before this lookup (I4 = I2 of c, d).
_I4_CLOSED: dict[tuple[str, str, str], QuadFn] = {
    ("erf", "erf", "erf"): _i4_erf,
    ("relu", "relu", "relu"): _relu_i4,
    ("relu", "relu", "linear"): _relu_student_i4(False, True),
    ("relu", "linear", "linear"): _relu_student_i4(True, True),
}


def has_closed_form_i2(a: Activation, b: Activation) -> bool:
    """Whether E[σ_a(λa) σ_b(λb)] has a registered closed form for this pair."""
    return (a.name, b.name) in _I2_CLOSED or (b.name, a.name) in _I2_CLOSED


# ---------------------------------------------------------------------------------
# Generic route: tensor-product Gauss–Hermite quadrature over correlated fields.
# ---------------------------------------------------------------------------------


@cache
def _hermite_np(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()  # probabilists' nodes; weights of the standard normal


def _hermite(n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    return tuple(torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in _hermite_np(n))


def _psd_cholesky(c: Tensor) -> Tensor:
    """Lower-triangular L with L Lᵀ = C for positive *semi*-definite C (..., m, m).

    Repeated or proportional fields make C singular, where torch's Cholesky fails.
    For a PSD matrix a zero pivot implies a zero column below it, so setting that
    column of L to zero is exact (up to round-off, hence the relative tolerance).
    """
    m = c.shape[-1]
    diag = torch.diagonal(c, dim1=-2, dim2=-1)
    tol = 64 * torch.finfo(c.dtype).eps * diag.amax(-1).clamp_min(_tiny(c))
    zero = torch.zeros_like(diag[..., 0])
    rows: list[list[Tensor]] = [[zero] * m for _ in range(m)]
    for k in range(m):
        pivot = c[..., k, k] - sum((rows[k][q] ** 2 for q in range(k)), zero)
        ok = pivot > tol
        lkk = torch.where(ok, pivot.clamp_min(_tiny(c)).sqrt(), zero)
        inv = torch.where(ok, 1.0 / lkk.clamp_min(_tiny(c)), zero)
        rows[k][k] = lkk
        for i in range(k + 1, m):
            rows[i][k] = (c[..., i, k] - sum((rows[i][q] * rows[k][q] for q in range(k)), zero)) * inv
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def _scaled_hermite(chol: Tensor, n_nodes: int, scale: float) -> tuple[Tensor, Tensor]:
    """Nodes z and weights w (..., m, N) of E over z ~ N(0, I), one row per axis of L.

    Plain Gauss–Hermite converges slowly when the fields are wide compared with the
    activation's own scale (the error of E[erf(λ/√2)] falls like (s²/(1+s²))^N for
    Var λ = s², and products of σ' factors are narrower still). Axis k is therefore
    integrated against a narrower Gaussian N(0, κ_k²), reweighted by the density
    ratio: z = κ u, w = w_u κ exp(u²(1 − κ²)/2). Too narrow a rule stops covering the
    fields' own spread; the best κ² found falls like 1/s (geometric mean of the two
    scales), so κ_k² = min(1, scale / √load_k) with load_k = Σ_i L_ik² the
    variance axis k feeds into all the integrand's fields. At the same node count this
    is orders of magnitude more accurate for erf, tanh, sigmoid and silu.
    """
    u, wu = _hermite(n_nodes, chol)
    load = (chol**2).sum(-2)  # (..., m)
    kappa2 = (scale / load.clamp_min(_tiny(chol)).sqrt()).clamp(max=1.0)[..., None]
    kappa = kappa2.sqrt()
    return kappa * u, wu * kappa * torch.exp(0.5 * (1 - kappa2) * u**2)


def _nested_hermite(c: Tensor, fns: tuple[ElementwiseFn, ...], n_nodes: int, scale: float) -> Tensor:
    """E[Π_i f_i(λ_i)] for λ ~ N(0, C), C (..., m, m), by m-D Gauss–Hermite quadrature.

    With λ = L z and L lower-triangular, λ_i depends on z_1..z_i only, so f_i is
    evaluated on an (i+1)-axis grid and the sums nest from the innermost field out:
    only the last field is evaluated on the full N^m grid.
    """
    chol = _psd_cholesky(c)
    z, w = _scaled_hermite(chol, n_nodes, scale)
    lead, m = c.shape[:-2], len(fns)

    def on_axis(x: Tensor, axis: int, ndim: int) -> Tensor:  # row ``axis`` of (*lead, m, N) -> grid
        shape = [1] * ndim
        shape[axis] = n_nodes
        return x[..., axis, :].reshape(*lead, *shape)

    factors = []
    for i in range(m):
        lam = sum(chol[..., i, k].reshape(*lead, *[1] * (i + 1)) * on_axis(z, k, i + 1) for k in range(i + 1))
        factors.append(fns[i](lam))
    # Innermost sum as a batched matrix-vector product: one pass over the N^m grid.
    acc = (factors[-1].reshape(*lead, -1, n_nodes) @ w[..., m - 1, :, None]).reshape(factors[-1].shape[:-1])
    for i in range(m - 2, -1, -1):
        acc = ((factors[i] * acc).reshape(*lead, -1, n_nodes) @ w[..., i, :, None]).reshape(acc.shape[:-1])
    return acc


def _generic_stein(c: Tensor, f: ElementwiseFn, g: ElementwiseFn, n_nodes: int,
                   scale: float) -> tuple[Tensor, Tensor]:
    """(α, β) with Ω_ab α + Ω_bc β = E[f(λa) λb g(λc)] for every field b, by 2-D quadrature.

    With (λa, λc) = L z, Gaussian integration by parts gives E[z h] = Lᵀ E[∇h] for
    h = f(λa) g(λc), so (α, β) = L⁻ᵀ (E[z1 h], E[z2 h]). For singular L the
    component along the null direction is set to zero: it multiplies a covariance
    that vanishes there, so I3 is still exact.
    """
    chol = _psd_cholesky(c)
    z, w = _scaled_hermite(chol, n_nodes, scale)
    (z1, z2), (w1, w2) = z.unbind(-2), w.unbind(-2)
    x = chol[..., 0, 0, None] * z1
    y = chol[..., 1, 0, None, None] * z1[..., :, None] + chol[..., 1, 1, None, None] * z2[..., None, :]
    grid = (f(x) * w1)[..., :, None] * (g(y) * w2[..., None, :])
    a1 = (grid.sum(-1) * z1).sum(-1)
    a2 = (grid.sum(-2) * z2).sum(-1)
    beta = torch.where(chol[..., 1, 1] > 0, a2 / chol[..., 1, 1].clamp_min(_tiny(c)), torch.zeros_like(a2))
    l00 = chol[..., 0, 0]
    alpha = torch.where(l00 > 0, (a1 - chol[..., 1, 0] * beta) / l00.clamp_min(_tiny(c)), torch.zeros_like(a1))
    return alpha, beta


# ---------------------------------------------------------------------------------
# Index-tuple machinery: gather sub-covariances, evaluate in memory-bounded chunks.
# ---------------------------------------------------------------------------------


def _flatten(omega: Tensor) -> Tensor:
    if omega.dim() < 2 or omega.shape[-1] != omega.shape[-2]:
        raise ValueError(f"omega must have shape (..., n, n), got {tuple(omega.shape)}")
    n = omega.shape[-1]
    return omega.reshape(-1, n, n)


def _pairs(ia: Tensor, ib: Tensor, same: bool) -> Tensor:
    """(T, 2) index pairs: the upper triangle when both come from one group."""
    if same:
        iu = torch.triu_indices(ia.numel(), ia.numel(), device=ia.device)
        return torch.stack([ia[iu[0]], ia[iu[1]]], dim=-1)
    return torch.cartesian_prod(ia, ib).reshape(-1, 2)


def _group_pairs(groups: list[tuple[Activation, Tensor]]):
    for x in range(len(groups)):
        for y in range(x, len(groups)):
            yield groups[x], groups[y], x == y


def _map_chunks(flat: Tensor, idx: Tensor, fn: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
                elements: int) -> Tensor | tuple[Tensor, ...]:
    """fn on the (B, t, m, m) sub-covariances of ``idx`` rows, in chunks of tuples.

    ``elements`` estimates the floats held at once per index tuple (nodes × live
    temporaries); a chunk holds at most _CHUNK_ELEMENTS of them.
    """
    step = max(1, _CHUNK_ELEMENTS // max(1, flat.shape[0] * elements))
    outs = []
    for s in range(0, idx.shape[0], step):
        rows = idx[s:s + step]
        outs.append(fn(flat[:, rows[:, :, None], rows[:, None, :]]))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outs))
    return torch.cat(outs, dim=1)


def _pair_entries(fn: PairFn) -> Callable[[Tensor], Tensor]:
    return lambda c: fn(c[..., 0, 0], c[..., 1, 1], c[..., 0, 1])


def _pair_expectation(a: ElementwiseFn, b: ElementwiseFn, closed: PairFn | None,
                      fields: FieldActivations) -> tuple[Callable[[Tensor], Tensor], int]:
    """Kernel on 2×2 sub-covariances and its per-tuple memory estimate."""
    if closed is not None:
        return _pair_entries(closed), 16
    nq = fields.quadrature_points
    return partial(_nested_hermite, fns=(a, b), n_nodes=nq, scale=fields.quadrature_scale), 4 * nq**2


def _i2_closed(a: Activation, b: Activation) -> PairFn | None:
    if (a.name, b.name) in _I2_CLOSED:
        return _I2_CLOSED[(a.name, b.name)]
    if (b.name, a.name) in _I2_CLOSED:
        swapped = _I2_CLOSED[(b.name, a.name)]
        return lambda caa, cbb, cab: swapped(cbb, caa, cab)
    return None


def _check_route(route: str) -> None:
    if route not in ("auto", "generic"):
        raise ValueError(f"route must be 'auto' or 'generic', got {route!r}")


# ---------------------------------------------------------------------------------
# Public integrals.
# ---------------------------------------------------------------------------------


def i2(omega: Tensor, fields: FieldActivations, route: Route = "auto") -> Tensor:
    """I2[a, b] = E[σ_a(λa) σ_b(λb)] for all fields, shape (..., n, n) (THEORY §3).

    σ_a is σ for a student index and σ* for a teacher index. The risk (§2) is a
    weighted sum of the three blocks.
    """
    _check_route(route)
    flat = _flatten(omega)
    n = flat.shape[-1]
    out = flat.new_zeros(flat.shape)
    for (ga, ia), (gb, ib), same in _group_pairs(fields.groups(n, flat.device)):
        idx = _pairs(ia, ib, same)
        closed = _i2_closed(ga, gb) if route == "auto" else None
        kernel, elements = _pair_expectation(ga.fn, gb.fn, closed, fields)
        vals = _map_chunks(flat, idx, kernel, elements)
        out[:, idx[:, 0], idx[:, 1]] = vals
        out[:, idx[:, 1], idx[:, 0]] = vals
    return out.reshape(omega.shape)


def j2(omega: Tensor, fields: FieldActivations, route: Route = "auto") -> Tensor:
    """J2[j, l] = E[σ'(λj) σ'(λl)] for student fields j, l, shape (..., p, p) (THEORY §3)."""
    _check_route(route)
    flat = _flatten(omega)
    p, sigma = fields.p, fields.student
    out = flat.new_zeros(flat.shape[0], p, p)
    if p == 0:
        return out.reshape(*omega.shape[:-2], p, p)
    students = torch.arange(p, device=flat.device)
    idx = _pairs(students, students, True)
    closed = _J2_CLOSED.get(sigma.name) if route == "auto" else None
    kernel, elements = _pair_expectation(sigma.derivative, sigma.derivative, closed, fields)
    vals = _map_chunks(flat, idx, kernel, elements)
    out[:, idx[:, 0], idx[:, 1]] = vals
    out[:, idx[:, 1], idx[:, 0]] = vals
    return out.reshape(*omega.shape[:-2], p, p)


def i3(omega: Tensor, fields: FieldActivations, route: Route = "auto") -> Tensor:
    """I3[j, b, c] = E[σ'(λj) λb σ_c(λc)], j a student, shape (..., p, n, n) (THEORY §3).

    Computed as Ω_jb α_jc + Ω_bc β_jc (Stein's lemma on the linear factor λb) with
    α_jc = E[σ''(λj) σ_c(λc)] and β_jc = E[σ'(λj) σ_c'(λc)]; relu's σ'' is the Dirac
    δ, so e.g. α = √(C_jj C_cc − C_jc²)/(2π C_jj) for relu/relu.
    """
    _check_route(route)
    flat = _flatten(omega)
    bsz, n, p = flat.shape[0], flat.shape[-1], fields.p
    sigma = fields.student
    alpha = flat.new_zeros(bsz, p, n)
    beta = flat.new_zeros(bsz, p, n)
    students = torch.arange(p, device=flat.device)
    for gc, ic in fields.groups(n, flat.device) if p else []:
        idx = torch.cartesian_prod(students, ic).reshape(-1, 2)
        closed = _STEIN_CLOSED.get((sigma.name, gc.name)) if route == "auto" else None
        if closed is not None:
            kernel, elements = _pair_entries(closed), 16
        else:
            nq = fields.quadrature_points
            kernel = partial(_generic_stein, f=sigma.derivative, g=gc.fn, n_nodes=nq, scale=fields.quadrature_scale)
            elements = 4 * nq**2
        a, b = _map_chunks(flat, idx, kernel, elements)
        alpha[:, idx[:, 0], idx[:, 1]] = a
        beta[:, idx[:, 0], idx[:, 1]] = b
    out = flat[:, :p, :, None] * alpha[:, :, None, :] + flat[:, None, :, :] * beta[:, :, None, :]
    return out.reshape(*omega.shape[:-2], p, n, n)


def i4(omega: Tensor, fields: FieldActivations, route: Route = "auto", rows: Tensor | None = None) -> Tensor:
    """I4[j, l, c, d] = E[σ'(λj) σ'(λl) σ_c(λc) σ_d(λd)], j, l students (THEORY §3).

    Shape (..., p, p, n, n), or (..., len(rows), p, n, n) for the student rows ``rows``
    only (to bound memory: the whole tensor holds p²n² numbers per batch element). When
    σ and σ* are both erf, the closed form is evaluated by broadcasting over all index
    tuples. Otherwise only j ≤ l and (within one activation block) c ≤ d are integrated
    and their symmetric images copied; the generic route is a nested 4-D Gauss–Hermite
    rule with ``fields.quadrature_points_4d`` nodes per dimension.
    """
    _check_route(route)
    flat = _flatten(omega)
    bsz, n, p = flat.shape[0], flat.shape[-1], fields.p
    sigma = fields.student
    rows_t = torch.arange(p, device=flat.device) if rows is None else torch.as_tensor(rows, device=flat.device)
    shape = (*omega.shape[:-2], rows_t.numel(), p, n, n)
    if p == 0:
        return flat.new_zeros(shape)
    if route == "auto" and sigma.name == "erf" and (fields.teacher.name == "erf" or n == p):
        return _i4_erf_rows(flat, p, rows_t).reshape(shape)
    if route == "auto" and sigma.name == "linear":
        # σ' = 1: I4[j, l, c, d] = I2[c, d].
        return i2(omega, fields, route)[..., None, None, :, :].expand(shape).clone()
    out = flat.new_zeros(bsz, p, p, n, n)
    students = torch.arange(p, device=flat.device)
    jl = _pairs(students, students, True)
    nq = fields.quadrature_points_4d
    for (gc, ic), (gd, id_), same in _group_pairs(fields.groups(n, flat.device)):
        cd = _pairs(ic, id_, same)
        idx = torch.cat([jl.repeat_interleave(cd.shape[0], 0), cd.repeat(jl.shape[0], 1)], dim=1)
        closed = _I4_CLOSED.get((sigma.name, gc.name, gd.name)) if route == "auto" else None
        if closed is not None:
            kernel, elements = closed, 64 if closed is _i4_erf else 48 * _RELU_PATH_NODES
        else:
            fns = (sigma.derivative, sigma.derivative, gc.fn, gd.fn)
            kernel = partial(_nested_hermite, fns=fns, n_nodes=nq, scale=fields.quadrature_scale)
            elements = 3 * nq**4
        vals = _map_chunks(flat, idx, kernel, elements)
        j, l, c, d = idx.unbind(-1)
        for a, b in ((j, l), (l, j)):
            out[:, a, b, c, d] = vals
            out[:, a, b, d, c] = vals
    return out[:, rows_t].reshape(shape)
