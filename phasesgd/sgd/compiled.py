"""Blocks of online-SGD steps of the committee student as one compiled function (docs/theory.md §1).

One step, w_j ← (1 − η) w_j + (γ/(pB)) Σ_b a_j e_b σ'(λ_bj) x_b/√d with η = γλ_wd/(pd),
is about a dozen tensor operations on (R, B, p) and (R, p, d) numbers. For a narrow
student each costs more in Python and dispatch than in arithmetic (a step at R = 1,
p = 8, d = 1000 is ~16 000 multiply-adds, far fewer than its operations' dispatch costs).
:func:`committee_steps` writes ``block`` consecutive steps as one function of (W, x, y, γ)
and ``torch.compile`` fuses it into a few loops (C++ on the CPU; Triton kernels replayed
as one CUDA graph with mode 'reduce-overhead' on CUDA, so kernel launches do not bound
it). The arithmetic is that of ``CommitteeStudent.sgd_step``, step after step, in the same
order; only the rounding of fused loops differs (1e-15 relative in float64).

The overlap chain's steps compile the same way (:func:`chain_cycle`): the steps between two
compressions as one function that calls the student's own ``field_step``, which pays where
a few narrow replicas make every eager step a dozen dispatch-bound operations.
"""

from __future__ import annotations

import functools
import logging
import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..theory.activations import ACTIVATIONS, Activation
from ..theory.field_step import FieldStep

if TYPE_CHECKING:
    from .networks import CommitteeStudent

log = logging.getLogger(__name__)

# Steps unrolled into one compiled function: a longer block spreads the fixed cost of a call
# over more steps, but compiles for longer (scripts/benchmark_sgd.py measures both).
BLOCK_STEPS = 32


def committee_steps(
    weight: Tensor,
    inputs: Tensor,
    labels: Tensor,
    rates: Tensor,
    second_layer: Tensor,
    *,
    activation: Activation,
    weight_decay: float,
) -> tuple[Tensor, Tensor]:
    """The SGD steps of ``inputs`` (b, R, B, d) and ``labels`` (b, R, B) at learning rates
    ``rates`` (b,) from ``weight`` (R, p, d): returns the new weights and the errors y − f
    (b, R, B). Functional (the caller writes the weights back), so that it compiles whole."""
    steps, _, batch, dim = inputs.shape
    width = weight.shape[1]
    gains = rates * (1.0 / (width * batch * math.sqrt(dim)))
    shrink = 1.0 - rates * (weight_decay / (width * dim))
    a = second_layer[:, None, :]
    errors = []
    for s in range(steps):
        x = inputs[s]
        lam = torch.bmm(x, weight.transpose(1, 2)) * (1.0 / math.sqrt(dim))  # λ = x Wᵀ/√d
        err = labels[s] - (activation(lam) * a).sum(-1) * (1.0 / width)  # e = y − (1/p) Σ_j a_j σ(λ_j)
        coeff = activation.derivative(lam) * err[..., None] * a
        if weight_decay:
            weight = weight * shrink[s]
        weight = weight + gains[s] * torch.bmm(coeff.transpose(1, 2), x)
        errors.append(err)
    return weight, torch.stack(errors)


def chain_cycle(
    buffer: Tensor,
    inputs: Tensor,
    labels: Tensor,
    rates: Tensor,
    *,
    rule: Callable[[Tensor, Tensor, Tensor], FieldStep],
    widths: tuple[int, ...],
    root_d: float,
) -> Tensor:
    """The c steps of one cycle of the overlap chain (:mod:`.chain`, B = 1) at widths m_t = ``widths``: from
    the student coordinates ``buffer`` (R, p, W), the inputs in coordinates x_t/√d (flat: step after step, each
    (R, m_t + 1)), the labels (c, R, 1) and the rates γ_t (c,), each step is OverlapChain.step's,

        λ = F x_t/√d,  (c, κ, s) = rule(λ, y_t, γ_t),  F ← s F + κ√d c (x_t/√d)ᵀ   (first m_t + 1 columns),

    with ``rule`` the student's own field_step. Returns the new coordinates; functional, so that it compiles
    whole. The second layer is fixed (no readout step)."""
    replicas, offset = buffer.shape[0], 0
    for t, m in enumerate(widths):
        x = inputs[offset : offset + replicas * (m + 1)].view(replicas, 1, m + 1)
        offset += replicas * (m + 1)
        F = buffer[:, :, : m + 1]
        step = rule(torch.bmm(F, x.transpose(1, 2)).transpose(1, 2), labels[t], rates[t])
        if step.shrink is not None:
            F = F * step.shrink
        F = F + (step.scale * root_d) * step.coefficients.transpose(1, 2) * x
        buffer = torch.cat([F, buffer[:, :, m + 1 :]], dim=2)
    return buffer


class CompiledCycles:
    """Whole blocks of the overlap chain's steps as one compiled :func:`chain_cycle` per (rule, widths, d):
    for a few narrow replicas a step is a dozen small operations, each bound by dispatch; compiled, the c
    steps between two compressions run as one call (the cycles repeat, so it compiles once)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.failed = False
        self._compiled: dict[tuple, Callable] = {}

    def __call__(
        self, rule: Callable, buffer: Tensor, inputs: Tensor, labels: Tensor, rates: Tensor, widths
    ) -> Tensor | None:
        """The new coordinates after the block (``chain_cycle``; d from the rule's student), or None where
        compiling fails (no C++ compiler, say): it says so once, and the caller goes on step by step."""
        root_d = math.sqrt(rule.__self__.dim)
        key = (id(rule.__self__), tuple(widths), root_d, tuple(buffer.shape))
        if key not in self._compiled:
            # a code object of its own per chain: torch.compile keeps its guards and recompilations per code
            # object, and a process that runs many chains (a sweep, the benchmark) would exhaust one's limit
            fn = types.FunctionType(chain_cycle.__code__.replace(), chain_cycle.__globals__, chain_cycle.__name__)
            fn.__kwdefaults__ = {"rule": rule, "widths": tuple(widths), "root_d": root_d}
            self._compiled[key] = torch.compile(fn, dynamic=False, fullgraph=True)
            log.info("overlap-chain cycles of %d steps compiled on %s (seconds, once)", len(widths), self.device)
        try:
            return self._compiled[key](buffer, _row_major(inputs), _row_major(labels), _row_major(rates))
        except Exception as err:  # torch.compile's failures come as many exception types
            log.warning("compiling the chain's steps failed, going on step by step: %s", str(err).splitlines()[0])
            self.failed = True
            return None


def compilable(activation: Activation) -> bool:
    """Only the registry's closed-form activations: a user function's σ' comes from
    autograd, which does not trace into one graph."""
    return ACTIVATIONS.get(activation.name) is activation


class CompiledSteps:
    """``block`` SGD steps of one student as a compiled :func:`committee_steps`.

    torch.compile specialises on the shapes (R, B, p, d), the dtype and the device; the
    first call of each costs seconds (cached on disk by inductor for later processes).
    """

    def __init__(
        self, activation: Activation, weight_decay: float, device: torch.device, block: int = BLOCK_STEPS
    ) -> None:
        self.block = block
        self.device = torch.device(device)
        fn = functools.partial(committee_steps, activation=activation, weight_decay=weight_decay)
        mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs on CUDA
        self._steps = torch.compile(fn, mode=mode, dynamic=False, fullgraph=True)
        log.info(
            "SGD steps compiled in blocks of %d on %s (torch.compile: seconds on the first block of each shape)",
            block,
            self.device,
        )

    def __call__(self, weight: Tensor, inputs: Tensor, labels: Tensor, rates: Tensor, second_layer: Tensor) -> Tensor:
        """Apply the steps to ``weight`` in place; returns the errors (b, R, B)."""
        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs were copied out
        inputs, labels = _row_major(inputs), _row_major(labels)
        new_weight, errors = self._steps(weight, inputs, labels, rates.to(weight.device, weight.dtype), second_layer)
        weight.copy_(new_weight)
        return errors.clone()


def _row_major(t: Tensor) -> Tensor:
    """``t`` with the strides of a fresh contiguous tensor: a contiguous tensor may carry
    any stride on a dimension of size 1 (R = 1 chunks do), and compiled code is
    specialised on strides."""
    if not t.is_contiguous():
        return t.contiguous()
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    return t.as_strided(t.shape, tuple(reversed(strides)))


@dataclass
class CompilePolicy:
    """When the loop runs whole blocks of steps compiled instead of step by step.

    ``enabled``: True, False, or None for automatic: on CUDA at once; on the CPU once the
    student has taken ``after_steps`` steps (compiling costs seconds, and pays back over
    about a million steps), and only while its R·p·d weights stay under ``below_numbers``:
    there the eager step is bound by dispatch, above it eager steps are as fast and leave
    the data thread more of the machine. The choice depends on the step count and the
    shapes alone (the count is saved with the weights), so a seed gives the same trajectory
    every time. Only the committee's own step compiles: a subclass that overrides the step
    (or the fields, readout or update it is built from) and a user's activation run eagerly.
    The overlap chain's blocks of steps compile under the same switch (:meth:`chain_cycles`).
    """

    enabled: bool | None = None
    after_steps: int = 2**20
    below_numbers: int = 2**18
    chain_below_rows: int = 128
    chain_max_cycle: int = 32
    _compiled: CompiledSteps | None = field(default=None, init=False, repr=False)
    _cycles: CompiledCycles | None = field(default=None, init=False, repr=False)

    def applies(self, student: CommitteeStudent) -> bool:
        """Whether ``student``'s next steps run compiled."""
        from .networks import CommitteeStudent

        own = ("sgd_step", "field_step", "committee_step", "fields", "readout", "forward")
        if not compilable(student.activation) or any(
            getattr(type(student), f) is not getattr(CommitteeStudent, f) for f in own
        ):
            return False
        if self.enabled is not None:
            return bool(self.enabled)
        if student.weight.is_cuda:
            return True
        return int(student.steps_taken) >= self.after_steps and student.weight.numel() < self.below_numbers

    def steps(self, student: CommitteeStudent) -> CompiledSteps:
        """The compiled steps for ``student``'s activation, weight decay and device (built once)."""
        compiled = self._compiled
        if compiled is None or compiled.device != student.weight.device:
            compiled = self._compiled = CompiledSteps(student.activation, student.weight_decay, student.weight.device)
        return compiled

    def chain_cycles(
        self, student: CommitteeStudent, replicas: int, batch: int, steps: int, cycle: int
    ) -> CompiledCycles | None:
        """The compiled blocks of the overlap chain for ``student``'s field_step, or None for eager steps: only
        the committee's own step with a fixed second layer, a closed-form activation, online steps (B = 1), at
        most ``chain_below_rows`` rows R·p (above, the eager step's batched kernels are as fast) and cycles of
        at most ``chain_max_cycle`` steps between compressions (each is unrolled into the compiled function);
        automatic (``enabled`` None) once the chain has taken ``after_steps`` steps, on the CPU and on CUDA
        alike. The choice depends on the sizes and the chain's step count alone."""
        from .networks import CommitteeStudent

        own = ("field_step", "committee_step", "readout")
        if (
            not compilable(student.activation)
            or "field_step" in vars(student)
            or any(getattr(type(student), f) is not getattr(CommitteeStudent, f) for f in own)
        ):
            return None
        if batch != 1 or replicas * student.width > self.chain_below_rows or cycle > self.chain_max_cycle:
            return None
        if self.enabled is False:
            return None
        if self.enabled is None and steps < self.after_steps:
            return None
        if self._cycles is None:
            self._cycles = CompiledCycles(student.second_layer.device)
        return None if self._cycles.failed else self._cycles
