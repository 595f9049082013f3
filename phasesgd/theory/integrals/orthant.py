"""Gaussian orthant probabilities and orthant moments of up to three fields, in closed form.

For x ~ N(0, C) with u ≤ 3 fields and the orthant O = {x_q > 0 for every q}:

    P(C)          = P(x ∈ O):  1, 1/2, 1/4 + arcsin ρ/(2π), 1/8 + Σ_{q<r} arcsin ρ_qr/(4π)
    M1(C; b)      = E[x_b 1_O(x)]     = Σ_m C_bm φ_m(0) P(C | x_m = 0)
    M2(C; a, b)   = E[x_a x_b 1_O(x)] = C_ab P(C) + Σ_{m≠b} C_am φ_m(0) M1(C | x_m = 0; b)

with φ_m(0) = 1/√(2π C_mm) and C | x_m = 0 the covariance of the other fields given
x_m = 0 (C − C_·m C_m· / C_mm without row and column m). Both moment formulas are Stein's
lemma E[x_a h(x)] = Σ_m C_am E[∂_m h(x)] with ∂_m 1(x_m > 0) = δ(x_m); in M2 the m = b
term of the indicator vanishes because x_b δ(x_b) = 0. Four fields would need the 4-D
orthant probability, which is not elementary (see :mod:`.relu_i4`).

These are the relu I4 integrals with repeated indices: 1(x>0)² = 1(x>0), 1(x>0) x⁺ = x⁺
and relu(x)² = x² 1(x>0), so E[1(λj>0) 1(λl>0) relu(λc) relu(λd)] over u ≤ 3 distinct
fields is M2 of those fields, with a, b the positions of c and d (a = b when c = d).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .fields import tiny

_PI = math.pi


def correlation(c: Tensor) -> Tensor:
    """Correlation matrices of covariances c (..., u, u), entries clamped to [−1, 1]."""
    sd = torch.diagonal(c, dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()
    return (c / (sd[..., :, None] * sd[..., None, :])).clamp(-1.0, 1.0)


def orthant_probability(c: Tensor) -> Tensor:
    """P(x_q > 0 for all q) for x ~ N(0, c), c of shape (..., u, u) with u ≤ 3."""
    u = c.shape[-1]
    if u > 3:
        raise ValueError(f"orthant probabilities are elementary for at most 3 fields, got {u}")
    if u <= 1:
        return torch.full(c.shape[:-2], 0.5**u, dtype=c.dtype, device=c.device)
    rho = correlation(c)
    arcsins = sum(torch.asin(rho[..., q, r]) for q in range(u) for r in range(q + 1, u))
    return 0.5**u + arcsins / (_PI * 2 ** (u - 1))


def condition_on_zero(c: Tensor, m: int) -> Tensor:
    """Covariance of the fields other than m given x_m = 0: C − C_·m C_m· / C_mm, without m."""
    keep = [q for q in range(c.shape[-1]) if q != m]
    cm = c[..., keep, m]
    rest = c[..., keep, :][..., keep]
    return rest - cm[..., :, None] * cm[..., None, :] / c[..., m, m].clamp_min(tiny(c))[..., None, None]


def _delta_weight(c: Tensor, q: int, m: int) -> Tensor:
    """C_qm φ_m(0) = C_qm / √(2π C_mm). Callers keep C well conditioned (relu_i4 sends
    nearly dependent fields to the path integral); the floor only avoids 0/0."""
    return c[..., q, m] / (2 * _PI * c[..., m, m]).sqrt().clamp_min(tiny(c))


def orthant_first_moment(c: Tensor, b: int) -> Tensor:
    """M1 = E[x_b 1(x > 0)] for x ~ N(0, c) (..., u, u), u ≤ 4 (the module docstring)."""
    return sum(_delta_weight(c, b, m) * orthant_probability(condition_on_zero(c, m)) for m in range(c.shape[-1]))


def orthant_second_moment(c: Tensor, a: int, b: int) -> Tensor:
    """M2 = E[x_a x_b 1(x > 0)] for x ~ N(0, c) (..., u, u), u ≤ 3; a = b allowed."""
    total = c[..., a, b] * orthant_probability(c)
    for m in range(c.shape[-1]):
        if m != b:
            total = total + _delta_weight(c, a, m) * orthant_first_moment(condition_on_zero(c, m), b - (m < b))
    return total
