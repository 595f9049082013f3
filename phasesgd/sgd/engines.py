"""The two engines of a run, one interface: SGD itself in weight space, and the exact overlap
chain (docs/theory.md §7), both driven by the student's one definition of its step
(:meth:`~phasesgd.sgd.networks.CommitteeStudent.field_step`).

- ``sgd``: d-dimensional weights and fresh Gaussian inputs from the stream, O(p d) per step.
- ``chain``: only the coordinates of the rows in the span of the rows, O((p + k)²) per step
  whatever d is; the same law of every order parameter at every step, not the same trajectory
  for a seed, and no input vectors.

An engine advances the run by a chunk of steps, gives the overlaps, says whether its state is
finite, and saves, restores and rewinds its state; the training module does the rest.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ..infra.validation import ConfigError, require_choice
from ..theory.order_parameters import Overlaps, order_parameters
from .chain import OverlapChain, TeacherSpec
from .compiled import CompilePolicy
from .data import GaussianStream
from .loop import advance
from .networks import CommitteeStudent, Teacher
from .seeding import generator

log = logging.getLogger(__name__)

ENGINES = ("sgd", "chain", "auto")
# Numbers of the d-dimensional initial weights the chain still draws (to start from the SGD
# engine's exact Ω(0) for the same seed); above, it draws Ω(0) from its law instead.
DRAWN_WEIGHTS_BELOW = 2**26
# The chain's work per replica-step relative to (p + k)²: a few passes over its coordinates.
CHAIN_WORK = 4.0


def choose_engine(name: str, p: int, k: int, d: int) -> str:
    """``name``, with 'auto' resolved to the cheaper engine: the chain when its O((p + k)²) work per
    step is below SGD's O(p d), i.e. CHAIN_WORK·(p + k)² < p·d."""
    require_choice("engine.name", name, ENGINES)
    if name != "auto":
        return name
    chosen = "chain" if CHAIN_WORK * (p + k) ** 2 < p * d else "sgd"
    log.info("engine=auto: %s (CHAIN_WORK·(p+k)² = %.3g against p·d = %.3g)", chosen, CHAIN_WORK * (p + k) ** 2, p * d)
    return chosen


class WeightSpace:
    """SGD itself: the student's d-dimensional weights, inputs from ``data``, the one loop."""

    name = "sgd"

    def __init__(self, student: CommitteeStudent, teacher: Teacher, data: GaussianStream) -> None:
        self.student, self.teacher, self.data = student, teacher, data
        self.policy = CompilePolicy()

    def bind(self, seed: int, device: torch.device) -> None:
        offset = self.student.replica_offset
        replicas = range(offset, offset + self.student.replicas)
        self.data.bind(self.student.dim, seed, replicas, device, self.student.weight.dtype)

    def advance(self, rates: Tensor, next_steps: int) -> None:
        advance(self.student, self.teacher, self.data, rates, self.policy, next_steps)

    def overlaps(self, dtype: torch.dtype) -> Overlaps:
        return order_parameters(self.student.weight, self.teacher.weight, dtype)

    def finite(self) -> bool:
        return bool(torch.isfinite(self.student.weight).all())

    def snapshot(self) -> dict[str, Any]:
        """What an interrupted chunk rewinds to (the weights are the module's own state)."""
        student = {key: value.detach().clone() for key, value in self.student.state_dict().items()}
        return {"student": student, "data": self.data.state_dict()}

    def rewind(self, snapshot: dict[str, Any]) -> None:
        self.student.load_state_dict(snapshot["student"])
        self.data.rewind(snapshot["data"])

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.load_state_dict(state["data"])

    def close(self) -> None:
        self.data.close()


class Chain:
    """The exact overlap chain (:class:`~phasesgd.sgd.chain.OverlapChain`) of the student's
    field-space step, in float64. Its random numbers come from the stream (seed, 'chain'); its
    initial overlaps are those of the drawn weights where ``draw_weights`` (the SGD engine's Ω(0)
    for the same seed), else drawn from their law."""

    name = "chain"

    def __init__(self, student: CommitteeStudent, teacher: Teacher, batch_size: int, drawn: bool) -> None:
        if not type(student).steps_in_field_space():
            raise ConfigError(
                f"student._target_: {type(student).__name__} defines its step in weight space only (sgd_step); "
                "engine=chain needs it in field space: define field_step(fields, labels, lr) (README, Extending)"
            )
        n = student.width + teacher.width
        if n + batch_size > student.dim:
            raise ConfigError(
                f"engine=chain needs p + k + data.batch_size <= d, got {student.width} + {teacher.width} + "
                f"{batch_size} > d={student.dim}: use engine=sgd"
            )
        self.student, self.teacher, self.batch_size, self.drawn = student, teacher, batch_size, drawn
        self.chain: OverlapChain | None = None
        self.policy = CompilePolicy()

    @staticmethod
    def draws_weights(replicas: int, p: int, k: int, d: int) -> bool:
        """Whether the chain starts from d-dimensional weights drawn once (small enough)."""
        return (replicas * p + k) * d < DRAWN_WEIGHTS_BELOW

    def bind(self, seed: int, device: torch.device) -> None:
        student, teacher = self.student, self.teacher
        gen = generator(seed, "chain", student.replica_offset, device=device)
        spec = TeacherSpec(teacher.activation, teacher.second_layer.double().to(device), teacher.init)
        if self.drawn:
            weights = student.weight.double().to(device)
            self.chain = OverlapChain.from_weights(
                weights, teacher.weight.double().to(device), student.dim, gen, teacher=spec
            )
        else:
            self.chain = OverlapChain.from_law(
                student.width, teacher.width, student.dim, student.replicas, gen, student.init, spec
            )
        self._share_second_layer()

    def _share_second_layer(self) -> None:
        """The chain moves the student's own second layer (one tensor), which the student's field_step reads."""
        self.chain.share_second_layer(self.student.second_layer.data)

    def advance(self, rates: Tensor, next_steps: int) -> None:
        """``len(rates)`` steps of the student's own :meth:`field_step` (looked up now, as the loop does), whole
        blocks of them compiled where the policy says so (:meth:`CompilePolicy.chain_cycles`)."""
        chain, student = self.chain, self.student
        cycle = chain.max_width - chain.k - chain.p  # steps between two compressions
        cycles = self.policy.chain_cycles(student, chain.replicas, self.batch_size, chain.steps, cycle)
        chain.run(len(rates), student.field_step, rates, self.teacher.noise, self.batch_size, cycles)

    def overlaps(self, dtype: torch.dtype) -> Overlaps:
        Q, M, P = self.chain.overlaps()
        return Overlaps(Q.to(dtype), M.to(dtype), P.to(dtype))

    def finite(self) -> bool:
        return bool(torch.isfinite(self.chain.student_coordinates).all())

    def snapshot(self) -> dict[str, Any]:
        return self.chain.state_dict()

    def rewind(self, snapshot: dict[str, Any]) -> None:
        self.chain.load_state_dict(snapshot)
        self._share_second_layer()

    def state_dict(self) -> dict[str, Any]:
        return {"chain": self.chain.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's chain, once bound (like the SGD engine's streams)."""
        self.chain.load_state_dict(state["chain"])
        self._share_second_layer()

    def close(self) -> None:
        """Nothing runs in the background."""
