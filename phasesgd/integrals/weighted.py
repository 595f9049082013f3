"""The integrals contracted with the error weights, as the ODE drift needs them.

With e = Σ_c w_c σ_c(λ_c) (docs/theory.md §4) the drift needs only

    T_jb = Σ_c w_c I3[j, b, c]            shape (..., p, n)
    Υ_jl = Σ_cd w_c w_d I4[j, l, c, d]    shape (..., p, p)

never the whole I3 (p n² numbers) or I4 (p² n²). T follows from the Stein coefficients
in O(p n²) by a matrix product. Υ is symmetric in (j, l) and I4 in (c, d), so each
unordered pair of each is integrated once, with weight 2 w_c w_d for c ≠ d: a quarter of
the whole tensor, contracted chunk by chunk so memory stays bounded at any width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .expectations import all_erf, i2, i4_kernel, stein_coefficients
from .fields import FieldActivations, Route, check_route, flatten, tiny
from .tuples import CHUNK_ELEMENTS, group_pairs, map_chunks, pairs

# Live (B, pairs, c ≤ d) temporaries of the broadcast erf Υ.
_ERF_TEMPORARIES = 12


def _batched_weights(omega: Tensor, w: Tensor) -> Tensor:
    """w (..., n) broadcast to the batch axes of Ω and flattened to (B, n)."""
    n = omega.shape[-1]
    if w.shape[-1] != n:
        raise ValueError(f"w must have shape (..., n) = (..., {n}), got {tuple(w.shape)}")
    return torch.broadcast_to(w, (*omega.shape[:-2], n)).reshape(-1, n)


def i3_weighted(omega: Tensor, fields: FieldActivations, w: Tensor, route: Route = "auto") -> Tensor:
    """T_jb = Σ_c w_c I3[j, b, c] = Ω_jb Σ_c α_jc w_c + Σ_c β_jc w_c Ω_cb, shape (..., p, n)
    (Stein coefficients α, β of :func:`~phasesgd.integrals.expectations.stein_coefficients`)."""
    check_route(route)
    flat = flatten(omega)
    wf = _batched_weights(omega, w)
    alpha, beta = stein_coefficients(flat, fields, route)
    p = fields.p
    out = flat[:, :p, :] * (alpha @ wf[:, :, None]) + (beta * wf[:, None, :]) @ flat
    return out.reshape(*omega.shape[:-2], p, flat.shape[-1])


def _upsilon_erf(flat: Tensor, wf: Tensor, jl: Tensor, budget: int) -> Tensor:
    """Υ of the (j, l) pairs ``jl`` (U, 2) for all-erf fields, shape (B, U).

    The erf I4 of §3 is (4/π²) arcsin(Λ0/√(Λ1Λ2))/√Λ4; Λ4 depends on (j, l) only and
    Λ1, Λ2 on (j, l, c) and (j, l, d), so only Λ0 and the arcsin run over (j, l, c ≤ d).
    """
    bsz, n = flat.shape[0], flat.shape[-1]
    cidx, didx = torch.triu_indices(n, n, device=flat.device)
    weight = wf[:, cidx] * wf[:, didx] * torch.where(cidx == didx, 1.0, 2.0).to(flat)  # (B, N2)
    ccd = flat[:, cidx, didx][:, None, :]
    diag = flat.diagonal(dim1=-2, dim2=-1)
    step = max(1, budget // max(1, bsz * cidx.numel() * _ERF_TEMPORARIES))
    out = []
    for s in range(0, jl.shape[0], step):
        j, l = jl[s:s + step].unbind(-1)
        aj, al = 1 + diag[:, j, None], 1 + diag[:, l, None]  # (B, u, 1)
        cjl = flat[:, j, l][..., None]
        Cj, Cl = flat[:, j], flat[:, l]  # (B, u, n)
        l4 = aj * al - cjl**2
        lam = l4 * (1 + diag[:, None, :]) - Cl**2 * aj - Cj**2 * al + 2 * cjl * Cj * Cl  # Λ1 at every c
        inv = lam.clamp_min(tiny(lam)).rsqrt()
        Cjc, Cjd, Clc, Cld = Cj[..., cidx], Cj[..., didx], Cl[..., cidx], Cl[..., didx]
        l0 = l4 * ccd - Clc * Cld * aj - Cjc * Cjd * al + cjl * (Cjc * Cld + Cjd * Clc)
        arg = (l0 * inv[..., cidx] * inv[..., didx]).clamp(-1.0, 1.0)
        total = (torch.asin(arg) @ weight[:, :, None])[..., 0]
        out.append((4.0 / math.pi**2) * total / l4[..., 0].clamp_min(tiny(l4)).sqrt())
    return torch.cat(out, dim=1)


def _upsilon_tuples(flat: Tensor, fields: FieldActivations, wf: Tensor, jl: Tensor, route: Route, budget: int) -> Tensor:
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


def upsilon(omega: Tensor, fields: FieldActivations, w: Tensor, route: Route = "auto",
            max_entries: int = CHUNK_ELEMENTS) -> Tensor:
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
        jl = pairs(torch.arange(p, device=flat.device), torch.arange(p, device=flat.device), True)
        if route == "auto" and all_erf(fields, n):
            vals = _upsilon_erf(flat, wf, jl, max_entries)
        else:
            vals = _upsilon_tuples(flat, fields, wf, jl, route, max_entries)
        out[:, jl[:, 0], jl[:, 1]] = vals
        out[:, jl[:, 1], jl[:, 0]] = vals
    return out.reshape(*omega.shape[:-2], p, p)
