"""Teacher committee and two-layer students (docs/theory.md §1).

Shapes: inputs ``x`` are (R, B, d) — R replicas, B samples per step — and the
student's first layer is (R, p, d), so R independent students train as one
batched tensor. The teacher is shared by all replicas.

A student defines its SGD step once, in field space (:meth:`~CommitteeStudent.field_step`,
:mod:`phasesgd.theory.field_step`): :meth:`~CommitteeStudent.sgd_step` applies it to the weights, and the
overlap chain (:mod:`.chain`) to the overlaps. The loop (:mod:`.loop`) calls ``sgd_step``
step by step, or runs compiled blocks of the same steps (:mod:`.compiled`) where the step is
this class's own: the model does the maths of a step and nothing else. New architectures
subclass :class:`CommitteeStudent` and override ``field_step``; :class:`TrainedReadoutStudent`
is the worked example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..infra.validation import ConfigError, require_at_least, require_choice, require_nonnegative, require_numbers
from ..theory.activations import Activation, get_activation
from ..theory.field_step import FieldRule, FieldStep, committee_readout, committee_step, readout_step
from ..theory.scaling import student_width
from .seeding import generator

INITS = ("gaussian", "orthonormal")


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    require_choice("dtype", name, ("float32", "float64"))
    return getattr(torch, name)


def init_rows(rows: int, dim: int, init: str, gen: torch.Generator, key: str = "init") -> Tensor:
    """``rows`` Gaussian vectors in R^dim rescaled to norm √d ('gaussian'), or
    orthonormalised and scaled by √d ('orthonormal', so that W Wᵀ/d = I). ``key`` is the
    config key that chose ``init`` (``teacher.init``, ``student.init``), named by a refusal.

    Drawn in float64 on the CPU so that a seed gives the same weights on every device.
    """
    require_choice(key, init, INITS)
    w = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    if init == "orthonormal":
        if rows > dim:
            raise ConfigError(f"{key}: 'orthonormal' needs width <= d, got width={rows}, d={dim}")
        w = torch.linalg.qr(w.T).Q.T
    return w * (math.sqrt(dim) / w.norm(dim=1, keepdim=True))


class Teacher(nn.Module):
    """Committee f*(x) = (1/k) Σ_r a*_r σ*(λ*_r), λ*_r = w*_r·x/√d; labels y = f* + √Δ ξ."""

    def __init__(
        self,
        width: int = 4,
        dim: int = 1000,
        activation: str | Activation = "erf",
        noise: float = 0.0,
        second_layer: Sequence[float] | None = None,
        init: str = "orthonormal",
        seed: int = 0,
        dtype: str | torch.dtype = "float32",
        draw_weights: bool = True,
    ) -> None:
        super().__init__()
        require_at_least("teacher.width", width, 1)
        require_at_least("d", dim, 1)
        require_nonnegative("teacher.noise", noise)
        self.width, self.dim, self.noise = int(width), int(dim), float(noise)
        self.activation = get_activation(activation)
        a_star = (
            torch.ones(width, dtype=torch.float64)
            if second_layer is None
            else torch.tensor(require_numbers("teacher.second_layer", second_layer, length=width), dtype=torch.float64)
        )
        dt = _dtype(dtype)
        require_choice("teacher.init", init, INITS)
        self.init = init
        # Without draw_weights (the overlap chain at large d) no d-dimensional row exists.
        w = init_rows(width, dim, init, generator(seed, "teacher"), "teacher.init") if draw_weights else None
        self.register_buffer("weight", torch.zeros(width, 0) if w is None else w.to(dt))
        self.register_buffer("second_layer", a_star.to(dt))

    def fields(self, x: Tensor) -> Tensor:
        """λ* = x W*ᵀ/√d, shape (..., k)."""
        return (x @ self.weight.T) * (1.0 / math.sqrt(self.dim))

    def forward(self, x: Tensor) -> Tensor:
        """f*(x), shape x.shape[:-1]."""
        return self.activation(self.fields(x)) @ self.second_layer / self.width

    def labels(self, x: Tensor, xi: Tensor) -> Tensor:
        """y = f*(x) + √Δ ξ for standard-normal ξ of shape x.shape[:-1]."""
        return self(x) + math.sqrt(self.noise) * xi


class CommitteeStudent(nn.Module):
    """R replicas of f(x) = (1/p) Σ_j a_j σ(λ_j), λ_j = w_j·x/√d, second layer fixed.

    ``width`` is p0: the actual width is p = round(p0 d^κ) (p = p0 at κ = 0).
    Replica r draws its initial weights from the stream (seed, 'student', replica_offset + r).
    """

    def __init__(
        self,
        width: int = 8,
        dim: int = 1000,
        activation: str | Activation = "erf",
        replicas: int = 1,
        kappa: float = 0.0,
        init: str = "gaussian",
        weight_decay: float = 0.0,
        seed: int = 0,
        replica_offset: int = 0,
        dtype: str | torch.dtype = "float32",
        draw_weights: bool = True,
    ) -> None:
        super().__init__()
        require_at_least("student.width", width, 1)
        require_at_least("d", dim, 1)
        require_at_least("replicas", replicas, 1)
        require_at_least("replica_offset", replica_offset, 0)
        require_nonnegative("student.weight_decay", weight_decay)
        self.dim, self.replicas, self.replica_offset = int(dim), int(replicas), int(replica_offset)
        self.width = student_width(width, dim, kappa)
        self.activation = get_activation(activation)
        self.weight_decay = float(weight_decay)
        dt = _dtype(dtype)
        require_choice("student.init", init, INITS)
        self.init = init
        if draw_weights:
            keys = [generator(seed, "student", replica_offset + r) for r in range(replicas)]
            w = torch.stack([init_rows(self.width, dim, init, key, "student.init") for key in keys])
        else:  # the overlap chain at large d: no d-dimensional row exists
            w = torch.zeros(replicas, self.width, 0, dtype=torch.float64)
        self.weight = nn.Parameter(w.to(dt), requires_grad=False)
        self.register_buffer("second_layer", torch.ones(replicas, self.width, dtype=dt))
        # SGD steps taken through the loop: the compile policy reads it, and it is saved with the weights
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.int64))

    def fields(self, x: Tensor) -> Tensor:
        """λ = x Wᵀ/√d per replica: (R, B, d) → (R, B, p)."""
        return torch.bmm(x, self.weight.transpose(1, 2)) * (1.0 / math.sqrt(self.dim))

    def readout(self, lam: Tensor) -> Tensor:
        """f = (1/p) Σ_j a_j σ(λ_j): (R, B, p) → (R, B)."""
        return committee_readout(self.activation, lam, self.second_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.fields(x))

    def field_step(self, fields: Tensor, labels: Tensor, lr: float) -> FieldStep:
        """This student's SGD step in field space (:mod:`phasesgd.theory.field_step`), from its fields λ
        (R, B, p) and the labels y (R, B): SGD on ℓ = ½(y − f)², averaged over the B samples,

            w_j ← (1 − γλ_wd/(pd)) w_j + (γ/(pB)) Σ_b a_j (y − f) σ'(λ_j) x/√d.

        The one definition of the step: :meth:`sgd_step` applies it to the weights, the
        overlap chain to the overlaps. A new student overrides this method."""
        return self.committee_step(fields, labels - self.readout(fields), lr)

    def committee_step(self, fields: Tensor, errors: Tensor, lr: float) -> FieldStep:
        """The committee's step for given errors e (R, B): c_bj = a_j e_b σ'(λ_bj), scale
        γ/(pB√d), shrink 1 − γλ_wd/(pd)."""
        return committee_step(self.activation, fields, errors, self.second_layer, lr, self.dim, self.weight_decay)

    @classmethod
    def steps_in_field_space(cls) -> bool:
        """Whether this class's step is its :meth:`field_step`: False for a subclass that
        overrides :meth:`sgd_step` below the class that defines ``field_step`` (a step written
        in weight space only, which the overlap chain cannot run)."""

        def owner(name: str) -> type:
            return next(c for c in cls.__mro__ if name in c.__dict__)

        return issubclass(owner("field_step"), owner("sgd_step"))

    def field_rule(self) -> FieldRule | None:
        """This student's :meth:`field_step` as the theory's rule (one sample per row, the
        second layer given), or None when its step is written in weight space only."""
        return StudentRule(self) if self.steps_in_field_space() else None

    def has_closed_form_ode(self) -> bool:
        """Whether the ODE's closed forms (docs/theory.md §4) are this student's: only for the
        built-in classes; a subclass may change the step, so its ODE is the quadrature's."""
        return type(self) in (CommitteeStudent, TrainedReadoutStudent)

    def sgd_step(self, x: Tensor, y: Tensor, lr: float) -> Tensor:
        """One SGD step on the inputs x (R, B, d) and labels y (R, B): :meth:`field_step`
        applied to the weights. Returns the errors y − f, shape (R, B)."""
        step = self.field_step(self.fields(x), y, lr)
        step.apply(self.weight, self.second_layer, x)
        return step.errors

    def first_layer_step(self, x: Tensor, lam: Tensor, err: Tensor, lr: float) -> None:
        """The committee's weight-space update for given fields and errors (for subclasses
        that override :meth:`sgd_step`; those run on the SGD engine only)."""
        self.committee_step(lam, err, lr).apply(self.weight, self.second_layer, x)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """½ mean_b (y − f)² per replica, shape (R,): the autograd oracle of :meth:`sgd_step`."""
        return 0.5 * ((y - self(x)) ** 2).mean(-1)


class TrainedReadoutStudent(CommitteeStudent):
    """A student whose second layer is trained too, at its own rate γ_a = γ_a0/d:

    a_j ← a_j + (γ_a/(pB)) Σ_b (y − f) σ(λ_j)   (docs/theory.md §4; the 1/d keeps a on the time scale of W).
    """

    def __init__(self, *args, second_layer_lr: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        require_nonnegative("student.second_layer_lr", second_layer_lr)
        self.second_layer_lr = float(second_layer_lr)
        self.second_layer = nn.Parameter(self.second_layer, requires_grad=False)

    def field_step(self, fields: Tensor, labels: Tensor, lr: float) -> FieldStep:
        errors = labels - self.readout(fields)
        readout, scale = readout_step(self.activation, fields, errors, self.second_layer_lr, self.dim)  # before W moves
        return replace(self.committee_step(fields, errors, lr), readout=readout, readout_scale=scale)


class _FieldStepCall(nn.Module):
    """``student.field_step`` as a module call, so that ``functional_call`` can hand it a second layer."""

    def __init__(self, student: CommitteeStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, fields: Tensor, labels: Tensor, lr: float) -> FieldStep:
        return self.student.field_step(fields, labels, lr)


class StudentRule:
    """A student's :meth:`~CommitteeStudent.field_step` as a
    :class:`~phasesgd.theory.field_step.FieldRule`: called with the quadrature's second layers
    in place of the student's own (which are not touched)."""

    def __init__(self, student: CommitteeStudent) -> None:
        self.call = _FieldStepCall(student)

    def __call__(self, fields: Tensor, labels: Tensor, second_layer: Tensor, lr: float) -> FieldStep:
        return functional_call(self.call, {"student.second_layer": second_layer}, (fields, labels, lr), strict=False)
