"""Closed forms of the Gaussian integrals, keyed by activation names (docs/theory.md §3).

Two-field kernels take the entries (C_aa, C_bb, C_ab) of a 2×2 sub-covariance in any
broadcastable shapes, so they are evaluated on whole blocks of Ω without gathering.
I4 kernels take the 4×4 sub-covariance of (j, l, c, d); the all-erf I4 also has an
entrywise form (:func:`i4_erf_entries`) for broadcasting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..activations import Activation
from .fields import tiny
from .relu_i4 import relu_i4, relu_student_i4

PairFn = Callable[[Tensor, Tensor, Tensor], Tensor]
SteinFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
QuadFn = Callable[[Tensor], Tensor]

_PI = math.pi
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _corr(caa: Tensor, cbb: Tensor, cab: Tensor) -> Tensor:
    """C_ab / √(C_aa C_bb), clamped to [-1, 1] against round-off."""
    return (cab / (caa * cbb).sqrt().clamp_min(tiny(cab))).clamp(-1.0, 1.0)


def _erf_mean_prime(caa: Tensor) -> Tensor:
    """E[σ'(λa)] for σ = erf(·/√2): √(2/π) / √(1 + C_aa)."""
    return _SQRT_2_OVER_PI / (1.0 + caa).sqrt()


def _i2_erf(caa: Tensor, cbb: Tensor, cab: Tensor) -> Tensor:
    """(2/π) arcsin(C_ab / √((1+C_aa)(1+C_bb)))  (docs/theory.md §3)."""
    return (2.0 / _PI) * torch.asin((cab / ((1.0 + caa) * (1.0 + cbb)).sqrt()).clamp(-1.0, 1.0))


def _i2_relu(caa: Tensor, cbb: Tensor, cab: Tensor) -> Tensor:
    """√(C_aa C_bb) (sin θ + (π − θ) cos θ) / (2π), cos θ = C_ab/√(C_aa C_bb)."""
    cos = _corr(caa, cbb, cab)
    theta = torch.acos(cos)
    return (caa * cbb).clamp_min(0).sqrt() * (torch.sin(theta) + (_PI - theta) * cos) / (2 * _PI)


I2_CLOSED: dict[tuple[str, str], PairFn] = {
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
    # β = (2/π)/√Λ3, α = −C_ac β/(1+C_aa): the I3 closed form of §3 split by Stein.
    beta = (2.0 / _PI) / ((1.0 + caa) * (1.0 + ccc) - cac**2).clamp_min(tiny(cac)).sqrt()
    return -cac * beta / (1.0 + caa), beta


def _stein_relu(caa: Tensor, ccc: Tensor, cac: Tensor) -> tuple[Tensor, Tensor]:
    # α = E[δ(a) relu(c)] = p_a(0) E[relu(c) | a = 0] = √(C_aa C_cc − C_ac²) / (2π C_aa);
    # β = E[1(a>0) 1(c>0)] = 1/4 + arcsin(ρ)/(2π).
    alpha = (caa * ccc - cac**2).clamp_min(0).sqrt() / (2 * _PI * caa.clamp_min(tiny(caa)))
    return alpha, 0.25 + torch.asin(_corr(caa, ccc, cac)) / (2 * _PI)


def _stein_erf_linear(caa: Tensor, ccc: Tensor, cac: Tensor) -> tuple[Tensor, Tensor]:
    # α = E[σ''(a) c] = C_ac E[σ'''(a)] = −C_ac √(2/π) (1+C_aa)^(−3/2); β = E[σ'(a)].
    beta = _erf_mean_prime(caa)
    return -cac * beta / (1.0 + caa), beta.expand_as(cac)


def _halve(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return pair[0] / 2, pair[1] / 2


def _zero_alpha(beta: Callable[[Tensor], Tensor]) -> SteinFn:
    """σ'' = 0 (linear student) or E[δ(a) σ_c(c)] = 0 (relu student, odd σ_c): α = 0."""

    def kernel(caa: Tensor, ccc: Tensor, cac: Tensor) -> tuple[Tensor, Tensor]:
        shape = torch.broadcast_shapes(caa.shape, ccc.shape, cac.shape)
        return torch.zeros(shape, dtype=cac.dtype, device=cac.device), beta(ccc).expand(shape)

    return kernel


# (α, β) = (E[σ''(λa) σ_c(λc)], E[σ'(λa) σ_c'(λc)]) for (student σ, field σ_c).
STEIN_CLOSED: dict[tuple[str, str], SteinFn] = {
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
    """(2/π) / √(1 + C_aa + C_bb + C_aa C_bb − C_ab²)  (docs/theory.md §3)."""
    return (2.0 / _PI) / ((1.0 + caa) * (1.0 + cbb) - cab**2).clamp_min(tiny(cab)).sqrt()


J2_CLOSED: dict[str, PairFn] = {
    "erf": _j2_erf,
    "relu": lambda caa, cbb, cab: 0.25 + torch.asin(_corr(caa, cbb, cab)) / (2 * _PI),
    "linear": lambda caa, cbb, cab: torch.ones_like(cab),
}


def i4_erf_entries(diagonal: Sequence[Tensor], off_diagonal: Sequence[Tensor]) -> Tensor:
    """(4/π²) arcsin(Λ0/√(Λ1Λ2)) / √Λ4 with a, b, c, d = j, l, c, d (docs/theory.md §3),
    from the ten covariance entries (any broadcastable shapes): ``diagonal`` = (C_aa, C_bb,
    C_cc, C_dd), ``off_diagonal`` = (C_ab, C_ac, C_ad, C_bc, C_bd, C_cd)."""
    caa, cbb, ccc, cdd = diagonal
    cab, cac, cad, cbc, cbd, ccd = off_diagonal
    l4 = (1 + caa) * (1 + cbb) - cab**2
    l0 = l4 * ccd - cbc * cbd * (1 + caa) - cac * cad * (1 + cbb) + cab * cac * cbd + cab * cad * cbc
    l1 = l4 * (1 + ccc) - cbc**2 * (1 + caa) - cac**2 * (1 + cbb) + 2 * cab * cac * cbc
    l2 = l4 * (1 + cdd) - cbd**2 * (1 + caa) - cad**2 * (1 + cbb) + 2 * cab * cad * cbd
    floor = tiny(l0)
    arg = (l0 / (l1 * l2).clamp_min(floor).sqrt()).clamp(-1.0, 1.0)
    return (4.0 / _PI**2) * torch.asin(arg) / l4.clamp_min(floor).sqrt()


def i4_erf(c: Tensor) -> Tensor:
    """The erf I4 on 4×4 sub-covariances (..., 4, 4) of (j, l, c, d)."""
    return i4_erf_entries(
        [c[..., i, i] for i in range(4)],
        [c[..., 0, 1], c[..., 0, 2], c[..., 0, 3], c[..., 1, 2], c[..., 1, 3], c[..., 2, 3]],
    )


# (student σ, σ_c, σ_d) -> I4 on the 4×4 sub-covariance of (j, l, c, d); blocks come
# students first, so σ_c is σ* only when σ_d is too. A linear student is handled
# before this lookup (I4 = I2 of c, d).
I4_CLOSED: dict[tuple[str, str, str], QuadFn] = {
    ("erf", "erf", "erf"): i4_erf,
    ("relu", "relu", "relu"): relu_i4,
    ("relu", "relu", "linear"): relu_student_i4(False, True),
    ("relu", "linear", "linear"): relu_student_i4(True, True),
}


def i2_closed(a: Activation, b: Activation) -> PairFn | None:
    """The closed form of E[σ_a(λa) σ_b(λb)], in either order of the registered pair."""
    if (a.name, b.name) in I2_CLOSED:
        return I2_CLOSED[(a.name, b.name)]
    if (b.name, a.name) in I2_CLOSED:
        swapped = I2_CLOSED[(b.name, a.name)]
        return lambda caa, cbb, cab: swapped(cbb, caa, cab)
    return None


def has_closed_form_i2(a: Activation, b: Activation) -> bool:
    """Whether E[σ_a(λa) σ_b(λb)] has a registered closed form for this pair."""
    return i2_closed(a, b) is not None
