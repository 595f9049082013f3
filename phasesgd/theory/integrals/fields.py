"""Which activation each local field carries, and the joint covariance Ω of the fields.

Fields are ordered students first, then teachers: ``n = p + k`` and
``Ω = [[Q, M], [Mᵀ, P]]`` with shape ``(..., n, n)`` (docs/theory.md §3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..activations import Activation

Route = Literal["auto", "generic"]
ElementwiseFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class FieldActivations:
    """Which activation each field carries, and the generic route's accuracy.

    Fields ``[:p]`` are students (σ = ``student``), fields ``[p:]`` teachers
    (σ* = ``teacher``). ``quadrature_points`` is the number of Gauss–Hermite nodes
    per dimension of the two-dimensional integrals (I2, J2 and the (j, c) pairs of
    I3); ``quadrature_points_4d`` that of the four-dimensional I4 (cost ∝ N⁴).
    ``quadrature_scale`` sets how much narrower than the fields the Gauss–Hermite
    rule is (see :func:`phasesgd.theory.integrals.hermite.scaled_hermite`); the default 0.8 is
    calibrated on erf.

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

    def blocks(self, n: int) -> list[tuple[Activation, slice]]:
        """Contiguous field ranges that share an activation: one when σ and σ* coincide."""
        if not 0 <= self.p <= n:
            raise ValueError(f"p={self.p} does not fit {n} fields")
        if self.student.name == self.teacher.name:
            return [(self.student, slice(0, n))]
        parts = [(self.student, slice(0, self.p)), (self.teacher, slice(self.p, n))]
        return [(act, s) for act, s in parts if s.stop > s.start]

    def groups(self, n: int, device: torch.device) -> list[tuple[Activation, Tensor]]:
        """The field indices of :meth:`blocks`, as index tensors."""
        return [(act, torch.arange(s.start, s.stop, device=device)) for act, s in self.blocks(n)]


def covariance(q: Tensor, m: Tensor, p: Tensor) -> Tensor:
    """Ω = [[Q, M], [Mᵀ, P]] from Q (..., p, p), M (..., p, k) and P (..., k, k); P is
    broadcast over the batch axes of Q (one teacher, many students)."""
    p = p.expand(*q.shape[:-2], *p.shape[-2:])
    top = torch.cat([q, m], dim=-1)
    bottom = torch.cat([m.transpose(-1, -2), p], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def tiny(x: Tensor) -> float:
    """Smallest positive normal number of x's dtype (a floor for divisions)."""
    return torch.finfo(x.dtype).tiny


def flatten(omega: Tensor) -> Tensor:
    """Ω (..., n, n) as (B, n, n), refusing anything that is not a stack of square matrices."""
    if omega.dim() < 2 or omega.shape[-1] != omega.shape[-2]:
        raise ValueError(f"omega must have shape (..., n, n), got {tuple(omega.shape)}")
    n = omega.shape[-1]
    return omega.reshape(-1, n, n)


def check_route(route: str) -> None:
    if route not in ("auto", "generic"):
        raise ValueError(f"route must be 'auto' or 'generic', got {route!r}")
