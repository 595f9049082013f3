"""Order parameters Q, M, P and the population risk R(Q, M, P) (docs/theory.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .activations import Activation, get_activation
from .integrals import FieldActivations, covariance, i2


@dataclass(frozen=True)
class Overlaps:
    """Q = W Wᵀ/d (…, p, p), M = W W*ᵀ/d (…, p, k), P = W* W*ᵀ/d (k, k), and the student's
    second layer a (…, p; None: all ones). Tensors, numpy arrays or nested lists."""

    Q: Any
    M: Any
    P: Any
    a: Any = None


def order_parameters(weight: Tensor, teacher_weight: Tensor, dtype: torch.dtype = torch.float64) -> Overlaps:
    """Q, M, P from student weights (…, p, d) and teacher weights (k, d), computed in ``dtype``."""
    w, w_star = weight.to(dtype), teacher_weight.to(dtype)
    d = w.shape[-1]
    return Overlaps(w @ w.transpose(-1, -2) / d, w @ w_star.T / d, w_star @ w_star.T / d)


def risk_from_overlaps(
    Q: Tensor,
    M: Tensor,
    P: Tensor,
    student_activation: str | Activation = "erf",
    teacher_activation: str | Activation = "erf",
    second_layer: Tensor | None = None,
    teacher_second_layer: Tensor | None = None,
) -> Tensor:
    """R = ½ [ (1/k²) a*ᵀ I2** a* + (1/p²) aᵀ I2 a − (2/(pk)) aᵀ I2* a* ], shape Q.shape[:-2].

    I2 comes from :func:`phasesgd.theory.integrals.i2` (closed form where one exists,
    Gauss–Hermite quadrature otherwise). R excludes the label noise: the test loss of
    a noisy label is R + Δ/2.
    """
    p, k = Q.shape[-1], P.shape[-1]
    batch = Q.shape[:-2]
    omega = covariance(Q, M, P)
    fields = FieldActivations(get_activation(student_activation), get_activation(teacher_activation), p)
    I2 = i2(omega, fields)
    a = torch.ones(*batch, p, dtype=Q.dtype, device=Q.device) if second_layer is None else second_layer.to(Q)
    a_star = (
        torch.ones(k, dtype=Q.dtype, device=Q.device) if teacher_second_layer is None else teacher_second_layer.to(Q)
    )
    a_star = a_star.expand(*batch, k)
    w = torch.cat([a / p, -a_star / k], -1)  # e = f* − f = −Σ_c w_c σ_c(λ_c)
    return 0.5 * torch.einsum("...a,...ab,...b->...", w, I2, w)
