"""relu I4 = E[1(λj>0) 1(λl>0) relu(λc) relu(λd)] by a one-dimensional Price's-theorem
path integral (docs/theory.md §3), and its linear-field variants.

Accuracy (one figure for every caller): |error| ≤ 1e-8 · √(C_cc C_dd), the scale of the
integral, for every covariance, nearly and exactly singular ones included. Measured: at most
2.8e-9 · √(C_cc C_dd) over the repeated-index cases of 40 random covariances against their
independent closed forms (tests/test_integrals.py); a value much smaller than that scale
(strongly anti-correlated fields) therefore has a larger relative error (up to ~1e-6 seen).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
from torch import Tensor

_PI = math.pi
# Gauss–Legendre nodes of the path integral.
_RELU_PATH_NODES = 40
# Smallest distance 1 − t* of the path's singularity that the node placement resolves.
_RELU_PATH_FLOOR = 1e-13
# Floats held per index tuple while the path integral runs (for memory chunking).
RELU_I4_ELEMENTS = 48 * _RELU_PATH_NODES


@cache
def _legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


def relu_i4(c: Tensor) -> Tensor:
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
    (half as many where ε ≥ 1e-3). Accuracy: see the module docstring (|error| ≤
    1e-8 · √(C_cc C_dd), singular covariances included).
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
    """∫_0^1 of _relu_i4_rate in v = log(1 − t + ε), by Gauss–Legendre (see relu_i4)."""
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
        s = gg(k, l) * rr(p, q) - (rr(p, k) * rr(q, k) + rr(p, l) * rr(q, l) - rr(k, l) * (rr(p, k) * rr(q, l) + rr(p, l) * rr(q, k)))
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


def relu_student_i4(linear_c: bool, linear_d: bool) -> Callable[[Tensor], Tensor]:
    """relu students with relu or linear c, d fields: linear(x) = relu(x) − relu(−x)."""

    def kernel(c: Tensor) -> Tensor:
        out = relu_i4(c)
        if linear_c:
            out = out - relu_i4(_sign_flip(c, 2))
        if linear_d:
            out = out - relu_i4(_sign_flip(c, 3))
        if linear_c and linear_d:
            out = out + relu_i4(_sign_flip(_sign_flip(c, 2), 3))
        return out

    return kernel
