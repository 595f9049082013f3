"""A student's SGD step in field space: the one definition both engines are built from
(docs/theory.md §1 and §6).

A two-layer student sees an input x only through its fields λ = W x/√d. Its SGD step on
the B inputs x_b of a step is then, for numbers that depend on x only through the fields
and the labels,

    w_j ← s w_j + κ Σ_b c_bj x_b,      a_j ← a_j + κ_a Δa_j,

with coefficients c (R, B, p), a scale κ (γ/(pB√d) for the committee), a shrink factor s
(1 − γλ_wd/(pd) for weight decay) and, for a trained second layer, Δa (R, p) at scale κ_a.
The weight-space engine applies it to W (:meth:`FieldStep.apply`); the overlap chain applies
it to the coordinates of W in the span of the rows, where x_b becomes z_b and the part of
x_b outside the span a χ² length (:mod:`phasesgd.sgd.chain`); the finite-size ODE averages
it over Gaussian fields (:mod:`phasesgd.ode.quadrature`). So a student is defined once, by its
``field_step``, and runs on both engines and in the theory.

The committee's rule is written here once, as functions of the activation and the second
layer (:func:`committee_readout`, :func:`committee_step`): the student's methods and the
ODE's default rule both call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

from torch import Tensor

from .activations import Activation


@dataclass(frozen=True)
class FieldStep:
    """One step of R replicas in field space (see the module docstring): ``errors`` y − f
    (R, B) for the loop, ``coefficients`` c (R, B, p), ``scale`` κ, ``shrink`` s (None: 1),
    ``readout`` Δa (R, p; None: the second layer is fixed) and its ``readout_scale`` κ_a."""

    errors: Tensor
    coefficients: Tensor
    scale: float
    shrink: float | None = None
    readout: Tensor | None = None
    readout_scale: float = 1.0

    def apply(self, weight: Tensor, second_layer: Tensor, x: Tensor) -> None:
        """The step on d-dimensional weights ``weight`` (R, p, d), in place, for inputs x (R, B, d)."""
        if self.shrink is not None:
            weight.mul_(self.shrink)
        weight.baddbmm_(self.coefficients.transpose(1, 2), x, alpha=self.scale)
        if self.readout is not None:
            second_layer.add_(self.readout, alpha=self.readout_scale)


class FieldRule(Protocol):
    """A student's step on one sample per row, as the theory evaluates it: fields λ (N, 1, p),
    labels y (N, 1) and second layers a (N, p) → the :class:`FieldStep` of the student with
    that second layer, at learning rate γ (docs/theory.md §8). The rows are independent
    samples (the ODE's quadrature points), so a mini-batch's step must be the average of
    its samples' steps."""

    def __call__(self, fields: Tensor, labels: Tensor, second_layer: Tensor, lr: float) -> FieldStep: ...


def committee_readout(activation: Activation, fields: Tensor, second_layer: Tensor) -> Tensor:
    """f = (1/p) Σ_j a_j σ(λ_j): fields (R, B, p), second layer (R, p) → (R, B)."""
    return (activation(fields) * second_layer[:, None, :]).sum(-1) * (1.0 / fields.shape[-1])


def committee_step(
    activation: Activation,
    fields: Tensor,
    errors: Tensor,
    second_layer: Tensor,
    lr: float,
    dim: int,
    weight_decay: float = 0.0,
) -> FieldStep:
    """The committee's step for errors e (R, B): c_bj = a_j e_b σ'(λ_bj), scale γ/(pB√d),
    shrink 1 − γλ_wd/(pd) (docs/theory.md §1)."""
    width = fields.shape[-1]
    coefficients = activation.derivative(fields) * errors[..., None] * second_layer[:, None, :]
    shrink = 1.0 - lr * weight_decay / (width * dim) if weight_decay else None
    scale = lr / (width * fields.shape[1] * math.sqrt(dim))
    return FieldStep(errors, coefficients, scale, shrink)


def readout_step(activation: Activation, fields: Tensor, errors: Tensor, rate: float, dim: int) -> tuple[Tensor, float]:
    """A trained second layer's step, a_j ← a_j + κ_a Δa_j: Δa_j = Σ_b e_b σ(λ_bj) (R, p) and
    κ_a = γ_a0/(d p B) (docs/theory.md §4; the 1/d keeps a on the time scale of W)."""
    readout = (activation(fields) * errors[..., None]).sum(1)
    return readout, rate / (dim * fields.shape[-1] * fields.shape[1])


@dataclass(frozen=True)
class CommitteeRule:
    """The committee's :class:`FieldRule` built from its physics rather than from a student
    module: the ODE's rule for the built-in students (the same functions as their
    ``field_step``). ``second_layer_lr`` None: the second layer is fixed."""

    activation: Activation
    teacher_activation: Activation
    dim: int
    weight_decay: float = 0.0
    second_layer_lr: float | None = None

    def __call__(self, fields: Tensor, labels: Tensor, second_layer: Tensor, lr: float) -> FieldStep:
        errors = labels - committee_readout(self.activation, fields, second_layer)
        step = committee_step(self.activation, fields, errors, second_layer, lr, self.dim, self.weight_decay)
        if self.second_layer_lr is None:
            return step
        readout, scale = readout_step(self.activation, fields, errors, self.second_layer_lr, self.dim)
        return replace(step, readout=readout, readout_scale=scale)
