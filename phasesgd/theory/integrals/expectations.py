"""The four Gaussian integrals of docs/theory.md §3 as whole tensors over the fields.

- ``I2[a, b]       = E[σ_a(λa) σ_b(λb)]``                       shape ``(..., n, n)``
- ``I3[j, b, c]    = E[σ'(λj) λb σ_c(λc)]``, j a student          shape ``(..., p, n, n)``
- ``I4[j, l, c, d] = E[σ'(λj) σ'(λl) σ_c(λc) σ_d(λd)]``, j, l students
                                                                  shape ``(..., p, p, n, n)``
- ``J2[j, l]       = E[σ'(λj) σ'(λl)]``, j, l students            shape ``(..., p, p)``

Two-field closed forms are evaluated on whole blocks of Ω by broadcasting; the
quadrature routes and I4 go tuple by tuple (:mod:`.tuples`), integrating only j ≤ l
and (within one activation block) c ≤ d and copying the symmetric images.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from ..activations import Activation
from .closed_forms import I4_CLOSED, J2_CLOSED, STEIN_CLOSED, PairFn, i2_closed, i4_erf, i4_erf_entries
from .fields import FieldActivations, Route, check_route, flatten
from .hermite import generic_stein, nested_hermite
from .relu_i4 import RELU_I4_ELEMENTS
from .tuples import group_pairs, map_chunks, pairs

Kernel = Callable[[Tensor], Tensor]


def _on_block_entries(flat: Tensor, rows: slice, cols: slice) -> tuple[Tensor, Tensor, Tensor]:
    """(C_aa, C_bb, C_ab) of the block Ω[rows, cols] of (B, n, n), broadcastable."""
    diag = flat.diagonal(dim1=-2, dim2=-1)
    return diag[:, rows, None], diag[:, None, cols], flat[:, rows, cols]


def _on_block(closed: PairFn, flat: Tensor, rows: slice, cols: slice):
    """A two-field closed form on the block Ω[rows, cols] of (B, n, n), by broadcasting."""
    return closed(*_on_block_entries(flat, rows, cols))


def _indices(s: slice, device: torch.device) -> Tensor:
    return torch.arange(s.start, s.stop, device=device)


def _pair_quadrature(a: Activation | Callable, b: Callable, fields: FieldActivations) -> tuple[Kernel, int]:
    """Generic kernel E[a(λ1) b(λ2)] on 2×2 sub-covariances, and its per-tuple memory."""
    nq = fields.quadrature_points
    return partial(nested_hermite, fns=(a, b), n_nodes=nq, scale=fields.quadrature_scale), 4 * nq**2


def _fill_pairs(out: Tensor, flat: Tensor, idx: Tensor, kernel: Kernel, elements: int) -> None:
    vals = map_chunks(flat, idx, kernel, elements)
    out[:, idx[:, 0], idx[:, 1]] = vals
    out[:, idx[:, 1], idx[:, 0]] = vals


def i2(omega: Tensor, fields: FieldActivations, route: Route = "auto") -> Tensor:
    """I2[a, b] = E[σ_a(λa) σ_b(λb)] for all fields, shape (..., n, n) (docs/theory.md §3).

    σ_a is σ for a student index and σ* for a teacher index. The risk (§2) is a
    weighted sum of the three blocks.
    """
    check_route(route)
    flat = flatten(omega)
    out = flat.new_zeros(flat.shape)
    for (ga, sa), (gb, sb), _ in group_pairs(fields.blocks(flat.shape[-1])):
        closed = i2_closed(ga, gb) if route == "auto" else None
        if closed is not None:
            vals = _on_block(closed, flat, sa, sb)
            out[:, sa, sb] = vals
            out[:, sb, sa] = vals.transpose(-1, -2)
        else:
            idx = pairs(_indices(sa, flat.device), _indices(sb, flat.device), sa == sb)
            _fill_pairs(out, flat, idx, *_pair_quadrature(ga.fn, gb.fn, fields))
    return out.reshape(omega.shape)


def j2(omega: Tensor, fields: FieldActivations, route: Route = "auto") -> Tensor:
    """J2[j, l] = E[σ'(λj) σ'(λl)] for student fields j, l, shape (..., p, p) (docs/theory.md §3)."""
    check_route(route)
    flat = flatten(omega)
    p, sigma = fields.p, fields.student
    closed = J2_CLOSED.get(sigma.name) if route == "auto" else None
    if closed is not None:
        out = _on_block(closed, flat, slice(0, p), slice(0, p))
    else:
        out = flat.new_zeros(flat.shape[0], p, p)
        if p:
            students = torch.arange(p, device=flat.device)
            _fill_pairs(
                out,
                flat,
                pairs(students, students, True),
                *_pair_quadrature(sigma.derivative, sigma.derivative, fields),
            )
    return out.reshape(*omega.shape[:-2], p, p)


def stein_coefficients(flat: Tensor, fields: FieldActivations, route: Route = "auto") -> tuple[Tensor, Tensor]:
    """α_jc = E[σ''(λj) σ_c(λc)] and β_jc = E[σ'(λj) σ_c'(λc)], each (B, p, n), of a
    (B, n, n) covariance; relu's σ'' is the Dirac δ (α = √(C_jj C_cc − C_jc²)/(2π C_jj)
    for relu/relu)."""
    bsz, n, p = flat.shape[0], flat.shape[-1], fields.p
    sigma = fields.student
    blocks = fields.blocks(n) if p else []
    closed = STEIN_CLOSED.get((sigma.name, blocks[0][0].name)) if len(blocks) == 1 and route == "auto" else None
    if closed is not None:  # one activation, one closed form: a single broadcast
        return closed(*(x.expand(bsz, p, n) for x in _on_block_entries(flat, slice(0, p), slice(0, n))))
    alpha, beta = flat.new_zeros(bsz, p, n), flat.new_zeros(bsz, p, n)
    for gc, sc in blocks:
        closed = STEIN_CLOSED.get((sigma.name, gc.name)) if route == "auto" else None
        if closed is not None:
            alpha[:, :, sc], beta[:, :, sc] = _on_block(closed, flat, slice(0, p), sc)
            continue
        nq = fields.quadrature_points
        kernel = partial(generic_stein, f=sigma.derivative, g=gc.fn, n_nodes=nq, scale=fields.quadrature_scale)
        idx = torch.cartesian_prod(torch.arange(p, device=flat.device), _indices(sc, flat.device)).reshape(-1, 2)
        a, b = map_chunks(flat, idx, kernel, 4 * nq**2)
        alpha[:, idx[:, 0], idx[:, 1]] = a
        beta[:, idx[:, 0], idx[:, 1]] = b
    return alpha, beta


def i3(omega: Tensor, fields: FieldActivations, route: Route = "auto") -> Tensor:
    """I3[j, b, c] = E[σ'(λj) λb σ_c(λc)], j a student, shape (..., p, n, n) (docs/theory.md §3).

    Computed as Ω_jb α_jc + Ω_bc β_jc (Stein's lemma on the linear factor λb) with the
    coefficients of :func:`stein_coefficients`.
    """
    check_route(route)
    flat = flatten(omega)
    n, p = flat.shape[-1], fields.p
    alpha, beta = stein_coefficients(flat, fields, route)
    out = flat[:, :p, :, None] * alpha[:, :, None, :] + flat[:, None, :, :] * beta[:, :, None, :]
    return out.reshape(*omega.shape[:-2], p, n, n)


def all_erf(fields: FieldActivations, n: int) -> bool:
    """Whether every field carries erf (the broadcast closed-form I4 applies)."""
    return fields.student.name == "erf" and (fields.teacher.name == "erf" or n == fields.p)


def i4_kernel(fields: FieldActivations, gc: Activation, gd: Activation, route: Route) -> tuple[Kernel, int]:
    """I4 on 4×4 sub-covariances of (j, l, c, d) for fields c, d carrying gc, gd, and its
    per-tuple memory: a registered closed form, else 4-D Gauss–Hermite quadrature."""
    sigma = fields.student
    closed = I4_CLOSED.get((sigma.name, gc.name, gd.name)) if route == "auto" else None
    if closed is not None:
        return closed, 64 if closed is i4_erf else RELU_I4_ELEMENTS
    nq = fields.quadrature_points_4d
    fns = (sigma.derivative, sigma.derivative, gc.fn, gd.fn)
    return partial(nested_hermite, fns=fns, n_nodes=nq, scale=fields.quadrature_scale), 3 * nq**4


def student_pairs(rows: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """The unordered student pairs (j ≤ l) touching ``rows``, shape (U, 2), and for every
    (row, l) of the |rows|·p requested entries the index of its pair."""
    lo = torch.minimum(rows[:, None], torch.arange(p, device=rows.device)[None, :])
    hi = torch.maximum(rows[:, None], torch.arange(p, device=rows.device)[None, :])
    keys, inverse = torch.unique((lo * p + hi).reshape(-1), return_inverse=True)
    return torch.stack([keys // p, keys % p], dim=-1), inverse


def _i4_erf_rows(flat: Tensor, p: int, rows: Tensor) -> Tensor:
    """All-erf I4[rows, :, :, :] of a (B, n, n) covariance by broadcasting, shape
    (B, |rows|, p, n, n): no gather of 4×4 sub-covariances (broadcasting is cheaper than tuples)."""
    diag = flat.diagonal(dim1=-2, dim2=-1)
    C_j = flat[:, rows]  # (B, m, n)
    C_l = flat[:, :p]  # (B, p, n)
    return i4_erf_entries(
        (
            diag[:, rows, None, None, None],
            diag[:, None, :p, None, None],
            diag[:, None, None, :, None],
            diag[:, None, None, None, :],
        ),
        (
            C_j[:, :, :p, None, None],
            C_j[:, :, None, :, None],
            C_j[:, :, None, None, :],
            C_l[:, None, :, :, None],
            C_l[:, None, :, None, :],
            flat[:, None, None, :, :],
        ),
    )


def _i4_tuples(flat: Tensor, fields: FieldActivations, route: Route, rows: Tensor) -> Tensor:
    """I4[rows] (B, |rows|, p, n, n) tuple by tuple, each unordered (j, l) and c ≤ d once."""
    bsz, n, p = flat.shape[0], flat.shape[-1], fields.p
    jl, where = student_pairs(rows, p)
    out = flat.new_zeros(bsz, jl.shape[0], n, n)
    for (gc, ic), (gd, id_), same in group_pairs(fields.groups(n, flat.device)):
        cd = pairs(ic, id_, same)
        idx = torch.cat([jl.repeat_interleave(cd.shape[0], 0), cd.repeat(jl.shape[0], 1)], dim=1)
        vals = map_chunks(flat, idx, *i4_kernel(fields, gc, gd, route))
        u = torch.arange(jl.shape[0], device=flat.device).repeat_interleave(cd.shape[0])
        out[:, u, idx[:, 2], idx[:, 3]] = vals
        out[:, u, idx[:, 3], idx[:, 2]] = vals
    return out[:, where].reshape(bsz, rows.numel(), p, n, n)


def i4(omega: Tensor, fields: FieldActivations, route: Route = "auto", rows: Tensor | None = None) -> Tensor:
    """I4[j, l, c, d] = E[σ'(λj) σ'(λl) σ_c(λc) σ_d(λd)], j, l students (docs/theory.md §3).

    Shape (..., p, p, n, n), or (..., len(rows), p, n, n) for the student rows ``rows``
    only: only the integrals those rows need are computed. When σ and σ* are both erf,
    the closed form is evaluated by broadcasting; otherwise each unordered (j, l) and
    (within one activation block) c ≤ d is integrated once and its symmetric images
    copied. The generic route is a nested 4-D Gauss–Hermite rule with
    ``fields.quadrature_points_4d`` nodes per dimension.
    """
    check_route(route)
    flat = flatten(omega)
    n, p = flat.shape[-1], fields.p
    rows_t = (
        torch.arange(p, device=flat.device) if rows is None else torch.as_tensor(rows, device=flat.device).reshape(-1)
    )
    if rows_t.numel() and not bool(((rows_t >= 0) & (rows_t < p)).all()):
        raise ValueError(f"rows must be student indices in [0, {p}), got {rows_t.tolist()}")
    shape = (*omega.shape[:-2], rows_t.numel(), p, n, n)
    if p == 0 or rows_t.numel() == 0:
        return flat.new_zeros(shape)
    if route == "auto" and all_erf(fields, n):
        return _i4_erf_rows(flat, p, rows_t).reshape(shape)
    if route == "auto" and fields.student.name == "linear":
        # σ' = 1: I4[j, l, c, d] = I2[c, d].
        return i2(omega, fields, route)[..., None, None, :, :].expand(shape).clone()
    return _i4_tuples(flat, fields, route, rows_t).reshape(shape)
