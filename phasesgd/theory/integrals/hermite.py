"""Generic route: tensor-product Gauss–Hermite quadrature over correlated Gaussian fields.

Nodes are mapped through a semidefinite Cholesky factor of each sub-covariance, on a
rule narrower than the fields (:func:`scaled_hermite`). Smooth activations converge
fast; kinks and cusps only algebraically.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import Tensor

from .fields import ElementwiseFn, tiny


@cache
def _hermite_np(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()  # probabilists' nodes; weights of the standard normal


def _hermite(n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    return tuple(torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in _hermite_np(n))


def psd_cholesky(c: Tensor) -> Tensor:
    """Lower-triangular L with L Lᵀ = C for positive *semi*-definite C (..., m, m).

    Repeated or proportional fields make C singular, where torch's Cholesky fails.
    For a PSD matrix a zero pivot implies a zero column below it, so setting that
    column of L to zero is exact (up to round-off, hence the relative tolerance).
    """
    m = c.shape[-1]
    diag = torch.diagonal(c, dim1=-2, dim2=-1)
    tol = 64 * torch.finfo(c.dtype).eps * diag.amax(-1).clamp_min(tiny(c))
    zero = torch.zeros_like(diag[..., 0])
    rows: list[list[Tensor]] = [[zero] * m for _ in range(m)]
    for k in range(m):
        pivot = c[..., k, k] - sum((rows[k][q] ** 2 for q in range(k)), zero)
        ok = pivot > tol
        lkk = torch.where(ok, pivot.clamp_min(tiny(c)).sqrt(), zero)
        inv = torch.where(ok, 1.0 / lkk.clamp_min(tiny(c)), zero)
        rows[k][k] = lkk
        for i in range(k + 1, m):
            rows[i][k] = (c[..., i, k] - sum((rows[i][q] * rows[k][q] for q in range(k)), zero)) * inv
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def scaled_hermite(chol: Tensor, n_nodes: int, scale: float) -> tuple[Tensor, Tensor]:
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
    kappa2 = (scale / load.clamp_min(tiny(chol)).sqrt()).clamp(max=1.0)[..., None]
    kappa = kappa2.sqrt()
    return kappa * u, wu * kappa * torch.exp(0.5 * (1 - kappa2) * u**2)


def nested_hermite(c: Tensor, fns: tuple[ElementwiseFn, ...], n_nodes: int, scale: float) -> Tensor:
    """E[Π_i f_i(λ_i)] for λ ~ N(0, C), C (..., m, m), by m-D Gauss–Hermite quadrature.

    With λ = L z and L lower-triangular, λ_i depends on z_1..z_i only, so f_i is
    evaluated on an (i+1)-axis grid and the sums nest from the innermost field out:
    only the last field is evaluated on the full N^m grid.
    """
    chol = psd_cholesky(c)
    z, w = scaled_hermite(chol, n_nodes, scale)
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


def generic_stein(c: Tensor, f: ElementwiseFn, g: ElementwiseFn, n_nodes: int, scale: float) -> tuple[Tensor, Tensor]:
    """(α, β) with Ω_ab α + Ω_bc β = E[f(λa) λb g(λc)] for every field b, by 2-D quadrature.

    With (λa, λc) = L z, Gaussian integration by parts gives E[z h] = Lᵀ E[∇h] for
    h = f(λa) g(λc), so (α, β) = L⁻ᵀ (E[z1 h], E[z2 h]). For singular L the
    component along the null direction is set to zero: it multiplies a covariance
    that vanishes there, so I3 is still exact.
    """
    chol = psd_cholesky(c)
    z, w = scaled_hermite(chol, n_nodes, scale)
    (z1, z2), (w1, w2) = z.unbind(-2), w.unbind(-2)
    x = chol[..., 0, 0, None] * z1
    y = chol[..., 1, 0, None, None] * z1[..., :, None] + chol[..., 1, 1, None, None] * z2[..., None, :]
    grid = (f(x) * w1)[..., :, None] * (g(y) * w2[..., None, :])
    a1 = (grid.sum(-1) * z1).sum(-1)
    a2 = (grid.sum(-2) * z2).sum(-1)
    beta = torch.where(chol[..., 1, 1] > 0, a2 / chol[..., 1, 1].clamp_min(tiny(c)), torch.zeros_like(a2))
    l00 = chol[..., 0, 0]
    alpha = torch.where(l00 > 0, (a1 - chol[..., 1, 0] * beta) / l00.clamp_min(tiny(c)), torch.zeros_like(a1))
    return alpha, beta
