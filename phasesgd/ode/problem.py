"""Preparing an ODE solve: checked tensors, the drift of docs/theory.md §4–§5 and the
packed initial state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from ..infra.validation import require_at_least, require_choice, require_nonnegative
from ..theory.activations import get_activation
from ..theory.integrals import FieldActivations, covariance
from ..theory.order_parameters import Overlaps
from ..theory.physics import RunPhysics
from ..theory.scaling import Scaling
from .drift import MODES, Mode, OrderParameterDrift, UnphysicalStateError, check_physical, prefactors
from .quadrature import Quadrature, RuleAverage

ArrayLike = np.ndarray | Tensor | Sequence | float


@dataclass(frozen=True)
class Problem:
    """A prepared solve: ``drift`` and its packed initial state ``y0`` (…, N) at time 0,
    the output times ``t`` and the integration grid ``t_full`` (t with 0 prepended when
    t[0] > 0), the batch shape, the fixed second layers and the fields."""

    drift: OrderParameterDrift
    y0: Tensor
    t: Tensor
    t_full: Tensor
    batch: tuple[int, ...]
    a0: Tensor
    a_star: Tensor | None
    P: Tensor
    fields: FieldActivations
    scaling: Scaling
    trained: bool
    mode: str
    physics: RunPhysics
    quadrature: Quadrature


def _tensor(name: str, value: ArrayLike, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.as_tensor(np.asarray(value) if isinstance(value, (list, tuple)) else value)
    t = t.to(dtype=dtype, device=device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got non-finite entries")
    return t


def _times(t_eval: ArrayLike, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = _tensor("t_eval", t_eval, dtype, device).reshape(-1)
    if t.numel() == 0 or bool((t < 0).any()) or bool((t[1:] <= t[:-1]).any()):
        raise ValueError(f"t_eval must be a non-empty 1-D sequence of times >= 0, strictly increasing, got {t_eval!r}")
    return t


def _check_shapes(Q0: Tensor, M0: Tensor, P: Tensor, a: Tensor | None, a_star: Tensor | None) -> None:
    if Q0.ndim < 2 or Q0.shape[-1] != Q0.shape[-2]:
        raise ValueError(f"Q0 must have shape (..., p, p), got {tuple(Q0.shape)}")
    p = Q0.shape[-1]
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must have shape (k, k) (shared by the batch), got {tuple(P.shape)}")
    k = P.shape[0]
    if M0.ndim < 2 or M0.shape[-2:] != (p, k):
        raise ValueError(f"M0 must have shape (..., p, k) = (..., {p}, {k}), got {tuple(M0.shape)}")
    if a is not None and (a.ndim < 1 or a.shape[-1] != p):
        raise ValueError(f"second_layer must have shape (..., p) = (..., {p}), got {tuple(a.shape)}")
    if a_star is not None and a_star.shape != (k,):
        raise ValueError(f"teacher_second_layer must have shape (k,) = ({k},), got {tuple(a_star.shape)}")
    for name, S in (("Q0", Q0), ("P", P)):
        if not torch.allclose(S, S.transpose(-1, -2), rtol=1e-10, atol=1e-12):
            raise ValueError(f"{name} must be symmetric")


def _check_scalars(physics: RunPhysics, mode: str) -> None:
    require_choice("mode", mode, MODES)
    for name in ("delta", "kappa"):
        value = getattr(physics, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if physics.d is not None:
        require_at_least("d", physics.d, 1)
    require_nonnegative("weight_decay", physics.weight_decay)
    require_at_least("batch_size", physics.batch_size, 1)
    if physics.second_layer_lr is not None:
        require_nonnegative("second_layer_lr", physics.second_layer_lr)


def _batch_shape(Q0: Tensor, M0: Tensor, g0: Tensor, noise: Tensor, a0: Tensor | None) -> tuple[int, ...]:
    try:  # numpy's version: torch's imports sympy on first use
        return tuple(
            np.broadcast_shapes(
                Q0.shape[:-2], M0.shape[:-2], g0.shape, noise.shape, () if a0 is None else a0.shape[:-1]
            )
        )
    except ValueError:
        raise ValueError(
            f"batch shapes do not broadcast: Q0 {tuple(Q0.shape[:-2])}, M0 {tuple(M0.shape[:-2])}, "
            f"gamma0 {tuple(g0.shape)}, "
            f"noise {tuple(noise.shape)}, second_layer {None if a0 is None else tuple(a0.shape[:-1])}"
        ) from None


def rule_rates(physics: RunPhysics, fields: FieldActivations, a_star: Tensor, gamma0: float, quadrature: Quadrature):
    """The quadrature of ``physics.field_rule`` (:class:`~.quadrature.RuleAverage`), at the run's γ, d and B."""
    scaling, d = physics.scaling, physics.d
    gamma = scaling.learning_rate(gamma0, d)
    return RuleAverage(
        physics.field_rule, fields, a_star, gamma, d, scaling.steps_per_unit_time(d), physics.batch_size, quadrature
    )


def _check_rule(physics: RunPhysics, mode: str, gamma0: Tensor) -> None:
    if physics.field_rule is None:
        return
    if mode != "finite" or physics.d is None:
        raise ValueError(
            "a student's own field-space rule has the finite-size ODE only (its step is at the run's γ, p, d): "
            f"use mode='finite' with physics.d set, got mode={mode!r}, d={physics.d!r}"
        )
    if gamma0.ndim:
        raise ValueError(f"a student's own field-space rule takes one gamma0, got the shape {tuple(gamma0.shape)}")


def prepare(
    overlaps: Overlaps,
    physics: RunPhysics,
    t_eval: ArrayLike,
    mode: Mode = "asymptotic",
    quadrature: Quadrature = Quadrature(),
) -> Problem:
    """Check the overlaps, the physics and the times of :func:`~phasesgd.ode.solve_ode` (bad
    input is refused before any compute, naming the argument) and build the drift, in
    float64 on the device of ``overlaps.Q`` (the CPU for arrays): the closed forms for the
    built-in committee, the ``quadrature`` of ``physics.field_rule`` for any other student."""
    _check_scalars(physics, mode)
    dtype, Q0 = torch.float64, overlaps.Q
    device = Q0.device if isinstance(Q0, Tensor) else torch.device("cpu")
    Q0t, M0t, Pt = (_tensor(n, getattr(overlaps, n[0]), dtype, device) for n in ("Q0", "M0", "P"))
    a0 = None if overlaps.a is None else _tensor("second_layer", overlaps.a, dtype, device)
    a_star = physics.teacher_second_layer
    a_star = None if a_star is None else _tensor("teacher_second_layer", a_star, dtype, device).reshape(-1)
    _check_shapes(Q0t, M0t, Pt, a0, a_star)
    g0 = _tensor("gamma0", physics.gamma0, dtype, device)
    if not bool((g0 > 0).all()):
        raise ValueError(f"gamma0 must be > 0 (every entry), got {physics.gamma0!r}")
    _check_rule(physics, mode, g0)
    noise_t = _tensor("noise", physics.noise, dtype, device)
    if not bool((noise_t >= 0).all()):
        raise ValueError(f"noise must be >= 0 (the label-noise variance Δ), got {physics.noise!r}")
    t = _times(t_eval, dtype, device)
    batch = _batch_shape(Q0t, M0t, g0, noise_t, a0)
    p, k = Q0t.shape[-1], Pt.shape[-1]
    trained = physics.second_layer_lr is not None
    a0 = torch.ones(p, dtype=dtype, device=device) if a0 is None else a0
    scaling = physics.scaling
    gamma0 = g0.expand(batch) if g0.ndim else float(g0)
    coeff = prefactors(mode, scaling, gamma0, p, physics.d, physics.second_layer_lr)
    if mode == "finite" and physics.batch_size > 1:  # the cross term of two samples (§8)
        coeff = replace(coeff, cross=coeff.noise * (1 - 1 / physics.batch_size) / physics.d)
    fields = FieldActivations(get_activation(physics.student_activation), get_activation(physics.teacher_activation), p)
    teacher_a = torch.ones(k, dtype=dtype, device=device) if a_star is None else a_star
    rule = None if physics.field_rule is None else rule_rates(physics, fields, teacher_a, float(g0), quadrature)
    drift = OrderParameterDrift(
        Pt,
        fields,
        coeff,
        noise=noise_t.expand(batch) if noise_t.ndim else float(noise_t),
        second_layer=None if trained else a0.expand(*batch, p),
        teacher_second_layer=a_star,
        train_second_layer=trained,
        weight_decay=physics.weight_decay,
        batch_size=physics.batch_size,
        lr_factor=physics.lr_factor,
        rule_rates=rule,
    )
    Q0t, M0t, a0 = Q0t.expand(*batch, p, p), M0t.expand(*batch, p, k), a0.expand(*batch, p)
    try:
        check_physical(covariance(Q0t, M0t, Pt), 0.0)
    except UnphysicalStateError as err:
        raise ValueError(f"Q0, M0, P: the initial overlaps are not a covariance ({err})") from None
    # Integrate from t = 0 even when the first output time is later.
    t_full = t if float(t[0]) == 0.0 else torch.cat([t.new_zeros(1), t])
    y0 = drift.pack(Q0t, M0t, a0)
    return Problem(drift, y0, t, t_full, batch, a0, a_star, Pt, fields, scaling, trained, mode, physics, quadrature)
