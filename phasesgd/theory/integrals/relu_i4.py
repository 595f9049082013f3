"""relu I4 = E[1(λj>0) 1(λl>0) relu(λc) relu(λd)]: closed-form orthant moments where
indices repeat, a one-dimensional Price's-theorem path integral where all four fields
differ (docs/theory.md §3), and its linear-field variants.

Accuracy (one figure for every caller): |error| ≤ 1e-8 · √(C_cc C_dd), the scale of the
integral, for every covariance, nearly and exactly singular ones included. Measured: the
path integral's nodes (8 to 40 by conditioning) within 1.6e-9 of 160 nodes over 20000
random, nearly singular and singular covariances; the closed forms within 3e-9 of the path
integral on the same repeated-index covariances (tests/test_integrals.py). A value much
smaller than that scale (strongly anti-correlated fields) therefore has a larger relative
error (up to ~1e-6 seen).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
from torch import Tensor

from .orthant import correlation, orthant_second_moment

_PI = math.pi
# Gauss–Legendre nodes of the path integral by ε (below): (smallest ε, nodes), the fewest
# that keep the error under 1e-9 of the integral's scale in each class, measured against
# 160 nodes over 20000 random, nearly singular and singular correlations.
_NODES_BY_EPS = ((1.0, 8), (0.1, 12), (1e-2, 16), (1e-3, 20), (1e-8, 32), (0.0, 40))
_RELU_PATH_NODES = max(n for _, n in _NODES_BY_EPS)
# Smallest distance 1 − t* of the path's singularity that the node placement resolves.
_RELU_PATH_FLOOR = 1e-13
# Floats held per index tuple while the path integral runs (for memory chunking).
RELU_I4_ELEMENTS = 48 * _RELU_PATH_NODES


@cache
def _legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


# The six position pairs of a tuple (j, l, c, d) that can hold the same field.
_POSITION_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
# Smallest eigenvalue of the merged fields' correlation for the closed forms: below it
# their round-off grows (1e-10: 3e-8 of the integral's scale), and the path integral is used.
_CLOSED_FORM_CONDITION = 1e-8
# Shapes of the merged integral: (distinct fields u, c and d the same field).
_SHAPES = ((4, False), (3, False), (3, True), (2, False), (2, True), (1, True))


@cache
def _merge_table(device: torch.device) -> tuple[Tensor, Tensor]:
    """For each of the 64 codes of equal positions (bits over _POSITION_PAIRS): the index
    into _SHAPES of the merged integral, and one position per distinct field (padded to 4),
    ordered c, then d (if another field), then the rest, so that the orthant moment is
    always E[x_0 x_b 1(x > 0)] with b = 0 (c = d) or b = 1; four fields keep their order."""
    shapes, kept = [], []
    for code in range(2 ** len(_POSITION_PAIRS)):
        root = list(range(4))
        for bit, (i, m) in enumerate(_POSITION_PAIRS):
            if code >> bit & 1:
                root = [root[i] if r == root[m] else r for r in root]
        order = list(dict.fromkeys([root[2], root[3], *sorted(set(root))]))
        if len(order) == 4:  # the path integral keeps the (j, l, c, d) order
            order = [0, 1, 2, 3]
        shapes.append(_SHAPES.index((len(order), root[2] == root[3])))
        kept.append(order + [0] * (4 - len(order)))
    return torch.tensor(shapes, device=device), torch.tensor(kept, device=device)


def relu_i4(c: Tensor) -> Tensor:
    """relu I4 = E[1(λj>0) 1(λl>0) relu(λc) relu(λd)] for sub-covariances c (..., 4, 4).

    Positions holding the same field (identical rows of c: j = l, c = d, or a student
    among c, d) are merged, exactly: over u ≤ 3 distinct fields the integral is the
    orthant moment E[x_a x_b 1(x > 0)] of :mod:`.orthant`, in closed form. Four distinct
    fields, and merged ones that are nearly linearly dependent (a correlation eigenvalue
    below 1e-8), go through :func:`relu_i4_path`. Computed in float64 whatever the input dtype.
    """
    dtype, batch = c.dtype, c.shape[:-2]
    flat = c.to(torch.float64).reshape(-1, 4, 4)
    code = sum((flat[:, i] == flat[:, m]).all(-1).long() << bit for bit, (i, m) in enumerate(_POSITION_PAIRS))
    shape_of, kept_of = _merge_table(flat.device)
    shape = shape_of[code]
    out = flat.new_empty(flat.shape[0])
    for s in shape.unique().tolist():
        (u, same), rows = _SHAPES[s], (shape == s).nonzero()[:, 0]
        kept = kept_of[code[rows], :u]
        sub = flat[rows[:, None, None], kept[:, :, None], kept[:, None, :]]
        if u < 4:  # the closed forms lose accuracy on nearly dependent fields; the path does not
            closed = _smallest_eigenvalue(correlation(sub), _CLOSED_FORM_CONDITION) >= _CLOSED_FORM_CONDITION
            out[rows[closed]] = orthant_second_moment(sub[closed], 0, 0 if same else 1)
            rows, sub = rows[~closed], flat[rows[~closed]]
        if rows.numel():
            out[rows] = relu_i4_path(sub)
    return out.reshape(batch).to(dtype)


def relu_i4_path(c: Tensor) -> Tensor:
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
    too. Computed in float64 whatever the input dtype, with 8 nodes where ε ≥ 1 (λ_min
    ≥ 1/2) up to 40 where ε < 1e-8 (_NODES_BY_EPS). Accuracy: see the module docstring (|error| ≤
    1e-8 · √(C_cc C_dd), singular covariances included).
    """
    dtype = c.dtype
    c = c.to(torch.float64)
    sd = torch.diagonal(c, dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()
    rho = correlation(c)
    lam_min = _smallest_eigenvalue(rho, 0.5)  # ε = λ/(1 − λ) is clamped at 1 from λ = 1/2
    eps = (lam_min / (1.0 - lam_min).clamp_min(1e-300)).clamp(_RELU_PATH_FLOOR, 1.0)
    total = (
        1.0 / (8 * _PI)
        + rho[..., 2, 3] / 16
        + _relu_path_integral(rho.reshape(-1, 4, 4), eps.reshape(-1)).reshape(eps.shape)
    )
    return (sd[..., 2] * sd[..., 3] * total).to(dtype)


def _smallest_eigenvalue(rho: Tensor, needed_below: float) -> Tensor:
    """λ_min of correlations (..., u, u) where it is below ``needed_below``; elsewhere a
    lower bound that is at least ``needed_below`` (Gershgorin's 1 − max_i Σ_{m≠i} |ρ_im|),
    so well-conditioned tuples skip the eigen-decomposition."""
    bound = 2.0 - rho.abs().sum(-1).amax(-1)
    close = ~(bound >= needed_below)
    if close.any():
        bound[close] = torch.linalg.eigvalsh(rho[close])[..., 0]
    return bound.clamp(0.0, 1.0)


@cache
def _node_table(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ε thresholds, node counts, nodes, weights) of _NODES_BY_EPS; row b of the padded
    node and weight tables holds the Gauss–Legendre rule on [0, 1] of class b."""
    counts = [n for _, n in _NODES_BY_EPS]
    x = torch.zeros(len(counts), max(counts), dtype=torch.float64)
    w = torch.zeros_like(x)
    for b, n in enumerate(counts):
        xb, wb = _legendre01(n)
        x[b, :n], w[b, :n] = torch.from_numpy(xb), torch.from_numpy(wb)
    floors = torch.tensor([e for e, _ in _NODES_BY_EPS], dtype=torch.float64)
    return floors.to(device), torch.tensor(counts, device=device), x.to(device), w.to(device)


def _relu_path_integral(rho: Tensor, eps: Tensor) -> Tensor:
    """∫_0^1 of _relu_i4_rate in v = log(1 − t + ε), by Gauss–Legendre (see relu_i4_path),
    for (T, 4, 4) correlations: each tuple gets the nodes of its ε class, and all nodes
    of all tuples go through the rate as one flat batch."""
    floors, counts, xs, ws = _node_table(rho.device)
    cls = (eps[:, None] < floors).sum(-1)  # first class whose floor ε reaches
    per_tuple = counts[cls]
    tup = torch.repeat_interleave(torch.arange(eps.shape[0], device=rho.device), per_tuple)
    node = torch.arange(tup.shape[0], device=rho.device) - (per_tuple.cumsum(0) - per_tuple)[tup]
    x, wq = xs[cls[tup], node], ws[cls[tup], node]
    e = eps[tup]
    lo, hi = e.log(), torch.log1p(e)
    ev = torch.exp(lo + (hi - lo) * x)
    w = (ev - e).clamp(0.0, 1.0)  # 1 − t at the nodes
    rate = _relu_i4_rate(rho[tup], w)
    return eps.new_zeros(eps.shape).index_add_(0, tup, rate * ev * wq * (hi - lo))


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
