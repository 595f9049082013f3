"""The SGD loop, written once: a chunk of S steps drawn from the stream, labelled by the
teacher and applied to the student (docs/theory.md §1).

The Lightning module and the phase diagram's probes both advance through
:func:`advance`; whether blocks of steps run compiled is the caller's
:class:`~.compiled.CompilePolicy`, never the model's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from .compiled import CompilePolicy
from .data import GaussianStream
from .networks import CommitteeStudent, Teacher

log = logging.getLogger(__name__)

EAGER = CompilePolicy(enabled=False)


def sgd_chunk(
    student: CommitteeStudent, inputs: Tensor, labels: Tensor, rates: Sequence[float] | Tensor, policy: CompilePolicy
) -> Tensor:
    """S consecutive SGD steps: ``inputs`` (S, R, B, d), ``labels`` (S, R, B) and learning
    rates γ_s (S,). Returns the errors y − f of every step, (S, R, B).

    The same as calling ``student.sgd_step`` S times, which is what it does unless
    ``policy`` runs whole blocks of steps as one compiled function (same arithmetic, fused
    loops).
    """
    steps = inputs.shape[0]
    rates = torch.as_tensor(rates, dtype=torch.float64)
    if labels.shape[0] != steps or rates.shape != (steps,) or steps == 0:
        raise ValueError(
            f"sgd_chunk: {steps} steps of inputs (at least 1) but {labels.shape[0]} of labels "
            f"and {tuple(rates.shape)} rates"
        )
    errors, done = _compiled_blocks(student, inputs, labels, rates, policy) if policy.applies(student) else ([], 0)
    errors += [student.sgd_step(inputs[s], labels[s], float(rates[s]))[None] for s in range(done, steps)]
    student.steps_taken += steps
    return torch.cat(errors)


def _compiled_blocks(
    student: CommitteeStudent, inputs: Tensor, labels: Tensor, rates: Tensor, policy: CompilePolicy
) -> tuple[list[Tensor], int]:
    """The whole blocks of a chunk through the compiled steps: (their errors, steps done).
    Where compiling fails (no C++ compiler, say), says so once and goes on step by step;
    a failed call has written nothing, since the compiled function returns new weights."""
    compiled = policy.steps(student)
    rates = rates.to(student.weight.device, student.weight.dtype)  # one copy, not one per block
    errors, done = [], 0
    while done + compiled.block <= inputs.shape[0]:
        block = slice(done, done + compiled.block)
        try:
            errors.append(compiled(student.weight, inputs[block], labels[block], rates[block], student.second_layer))
        except Exception as err:  # torch.compile's failures come as many exception types
            log.warning("compiling the SGD steps failed, going on step by step: %s", str(err).splitlines()[0])
            policy.enabled = False
            break
        done += compiled.block
    return errors, done


def advance(
    student: CommitteeStudent,
    teacher: Teacher,
    stream: GaussianStream,
    rates: Tensor,
    policy: CompilePolicy = EAGER,
    next_steps: int = 0,
) -> None:
    """``len(rates)`` SGD steps on fresh inputs of ``stream``, labelled by ``teacher``;
    ``next_steps`` is the size of the chunk after this one (drawn ahead in the background)."""
    chunk = stream.draw(len(rates), next_steps=next_steps)
    labels = teacher.labels(chunk.inputs, chunk.label_noise)  # (S, R, B)
    sgd_chunk(student, chunk.inputs, labels, rates, policy)
    stream.release(chunk)
