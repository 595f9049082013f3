"""The integrals contracted with the error weights, as the ODE drift needs them.

With e = Σ_c w_c σ_c(λ_c) (docs/theory.md §4) the drift needs only

    T_jb = Σ_c w_c I3[j, b, c]            shape (..., p, n)
    Υ_jl = Σ_cd w_c w_d I4[j, l, c, d]    shape (..., p, p)

never the whole I3 (p n² numbers) or I4 (p² n²). T follows from the Stein coefficients
in O(p n²) by a matrix product. Υ is symmetric in (j, l) and I4 in (c, d), so each
unordered (j, l) is computed once; the tuple routes also take each c ≤ d once, with
weight 2 w_c w_d for c ≠ d. Contracted chunk by chunk, memory stays bounded at any width.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .expectations import all_erf, i2, i4_kernel, stein_coefficients
from .fields import FieldActivations, Route, check_route, flatten, tiny
from .tuples import CHUNK_ELEMENTS, group_pairs, map_chunks, pairs

# Numbers of one (B, pairs, n, n) block of the erf Υ: 1 MiB of float64, so it stays in cache.
UPSILON_CHUNK = 2**17


@functools.cache
def _student_pairs(p: int, device: torch.device) -> Tensor:
    """The unordered student pairs j ≤ l, (p(p+1)/2, 2), built once per width and device."""
    return pairs(torch.arange(p, device=device), torch.arange(p, device=device), True)


def _batched_weights(omega: Tensor, w: Tensor) -> Tensor:
    """w (..., n) broadcast to the batch axes of Ω and flattened to (B, n)."""
    n = omega.shape[-1]
    if w.shape[-1] != n:
        raise ValueError(f"w must have shape (..., n) = (..., {n}), got {tuple(w.shape)}")
    return torch.broadcast_to(w, (*omega.shape[:-2], n)).reshape(-1, n)


def i3_weighted(omega: Tensor, fields: FieldActivations, w: Tensor, route: Route = "auto") -> Tensor:
    """T_jb = Σ_c w_c I3[j, b, c] = Ω_jb Σ_c α_jc w_c + Σ_c β_jc w_c Ω_cb, shape (..., p, n)
    (Stein coefficients α, β of :func:`~phasesgd.theory.integrals.expectations.stein_coefficients`)."""
    check_route(route)
    flat = flatten(omega)
    wf = _batched_weights(omega, w)
    alpha, beta = stein_coefficients(flat, fields, route)
    p = fields.p
    out = flat[:, :p, :] * (alpha @ wf[:, :, None]) + (beta * wf[:, None, :]) @ flat
    return out.reshape(*omega.shape[:-2], p, flat.shape[-1])


def _upsilon_erf(flat: Tensor, wf: Tensor, jl: Tensor, budget: int) -> Tensor:
    """Υ of the (j, l) pairs ``jl`` (U, 2) for all-erf fields, shape (B, U).

    The erf I4 of §3 is (4/π²) arcsin(Λ0/√(Λ1Λ2))/√Λ4 with, for fixed (j, l),
    Λ4 = (1+Ω_jj)(1+Ω_ll) − Ω_jl² and Λ0[c, d] = Λ4 Ω_cd − X_c S X_dᵀ a rank-2 update of
    Ω, X_c = (Ω_jc, Ω_lc), S = [[1+Ω_ll, −Ω_jl], [−Ω_jl, 1+Ω_jj]]; Λ1 = Λ4 + Λ0[c, c] and
    Λ2 = Λ4 + Λ0[d, d]. So each (j, l) costs one n×n matrix product and one arcsin per
    (c, d), with no gather; chunks of pairs stay small enough to live in cache.
    """
    bsz, n = flat.shape[0], flat.shape[-1]
    step = max(1, min(budget, UPSILON_CHUNK) // max(1, bsz * n * n))
    out = []
    for s in range(0, jl.shape[0], step):
        j, l = jl[s : s + step].unbind(-1)
        ajj, all_, cjl = 1 + flat[:, j, j], 1 + flat[:, l, l], flat[:, j, l]  # (B, u)
        l4 = ajj * all_ - cjl**2
        X = torch.stack([flat[:, j], flat[:, l]], dim=-1)  # (B, u, n, 2)
        S = torch.stack([torch.stack([all_, -cjl], -1), torch.stack([-cjl, ajj], -1)], -2)  # (B, u, 2, 2)
        lam0 = l4[..., None, None] * flat[:, None]  # (B, u, n, n), minus X S Xᵀ in place:
        lam0.view(-1, n, n).baddbmm_((X @ S).reshape(-1, n, 2), X.transpose(-1, -2).reshape(-1, 2, n), alpha=-1)
        inv = (lam0.diagonal(dim1=-2, dim2=-1) + l4[..., None]).clamp_min(tiny(l4)).rsqrt()  # 1/√Λ1
        arcsin = lam0.mul_(inv[..., :, None]).mul_(inv[..., None, :]).clamp_(-1.0, 1.0).asin_()
        row_sums = (arcsin.view(bsz, -1, n) @ wf[:, :, None]).view(bsz, -1, n)  # Σ_d A_cd w_d
        total = (row_sums @ wf[:, :, None])[..., 0]
        out.append((4.0 / math.pi**2) * total / l4.clamp_min(tiny(l4)).sqrt())
    return torch.cat(out, dim=1)


def _upsilon_tuples(
    flat: Tensor, fields: FieldActivations, wf: Tensor, jl: Tensor, route: Route, budget: int
) -> Tensor:
    """Υ of the (j, l) pairs ``jl`` tuple by tuple (closed-form kernels or quadrature)."""
    n = flat.shape[-1]
    out = flat.new_zeros(flat.shape[0], jl.shape[0])
    for (gc, ic), (gd, id_), same in group_pairs(fields.groups(n, flat.device)):
        cd = pairs(ic, id_, same)
        weight = wf[:, cd[:, 0]] * wf[:, cd[:, 1]] * torch.where(cd[:, 0] == cd[:, 1], 1.0, 2.0).to(flat)
        idx = torch.cat([jl.repeat_interleave(cd.shape[0], 0), cd.repeat(jl.shape[0], 1)], dim=1)
        kernel, elements = i4_kernel(fields, gc, gd, route)
        vals = map_chunks(flat, idx, kernel, elements, budget)
        out = out + (vals.reshape(flat.shape[0], jl.shape[0], cd.shape[0]) * weight[:, None, :]).sum(-1)
    return out


def upsilon(
    omega: Tensor, fields: FieldActivations, w: Tensor, route: Route = "auto", max_entries: int = CHUNK_ELEMENTS
) -> Tensor:
    """Υ_jl = E[σ'(λ_j) σ'(λ_l) e²] = Σ_cd w_c w_d I4[j, l, c, d], shape (..., p, p).

    ``w`` (..., n) broadcasts against the batch axes of ``omega``. Each unordered (j, l)
    and (c, d) is evaluated once; at most about ``max_entries`` numbers are held at once.
    A linear student (σ' = 1) gives Υ_jl = wᵀ I2 w for every (j, l).
    """
    check_route(route)
    flat = flatten(omega)
    wf = _batched_weights(omega, w)
    bsz, n, p = flat.shape[0], flat.shape[-1], fields.p
    out = flat.new_zeros(bsz, p, p)
    if p and route == "auto" and fields.student.name == "linear":
        out = (wf[:, None, :] @ flatten(i2(flat, fields, route)) @ wf[:, :, None]).expand(bsz, p, p).clone()
    elif p:
        jl = _student_pairs(p, flat.device)
        if route == "auto" and all_erf(fields, n):
            vals = _upsilon_erf(flat, wf, jl, max_entries)
        else:
            vals = _upsilon_tuples(flat, fields, wf, jl, route, max_entries)
        out[:, jl[:, 0], jl[:, 1]] = vals
        out[:, jl[:, 1], jl[:, 0]] = vals
    return out.reshape(*omega.shape[:-2], p, p)
