"""The one SGD loop: chunks of steps, step by step or in compiled blocks under a
:class:`~phasesgd.sgd.compiled.CompilePolicy`, always the arithmetic of ``sgd_step``."""

from __future__ import annotations

import pytest
import torch

from phasesgd.sgd.compiled import BLOCK_STEPS, CompilePolicy
from phasesgd.sgd.loop import sgd_chunk
from phasesgd.sgd.networks import CommitteeStudent, TrainedReadoutStudent

pytestmark = pytest.mark.usefixtures("float64_default")  # float64 tensors by default in this file


def _chunk(steps: int, replicas: int, batch: int, d: int, seed: int = 11):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, replicas, batch, d, generator=gen)
    y = torch.randn(steps, replicas, batch, generator=gen)
    rates = torch.linspace(0.5, 3.0, steps, dtype=torch.float64)  # a schedule: every step its own γ
    return x, y, rates


def _step_loop(student, x, y, rates):
    """The reference: one sgd_step per step, learning rates as Python floats."""
    return torch.stack([student.sgd_step(x[s], y[s], float(rates[s])) for s in range(x.shape[0])])


@pytest.mark.slow
def test_compiled_chunk_equals_the_step_loop():
    """Blocks of compiled steps (two full blocks and a remainder, weight decay, B = 2, a
    non-uniform second layer) against sgd_step called step by step, in float64."""
    steps = 2 * BLOCK_STEPS + 5
    x, y, rates = _chunk(steps, replicas=2, batch=2, d=20)
    fast = CommitteeStudent(width=3, dim=20, activation="erf", replicas=2, seed=4, dtype="float64", weight_decay=0.3)
    slow = CommitteeStudent(width=3, dim=20, activation="erf", replicas=2, seed=4, dtype="float64", weight_decay=0.3)
    for student in (fast, slow):
        student.second_layer.copy_(torch.tensor([0.5, 1.0, 2.0]))
    policy = CompilePolicy(enabled=True)
    with torch.no_grad():
        errors = sgd_chunk(fast, x, y, rates, policy)
        expected = _step_loop(slow, x, y, rates)
    assert policy.applies(fast) and int(fast.steps_taken) == steps
    assert not torch.equal(slow.weight, CommitteeStudent(width=3, dim=20, replicas=2, seed=4, dtype="float64").weight)
    torch.testing.assert_close(fast.weight, slow.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(errors, expected, rtol=1e-12, atol=1e-12)


def test_uncompiled_chunk_is_bitwise_the_step_loop():
    x, y, rates = _chunk(20, replicas=3, batch=1, d=30)
    a = CommitteeStudent(width=4, dim=30, replicas=3, seed=2, dtype="float64")
    b = CommitteeStudent(width=4, dim=30, replicas=3, seed=2, dtype="float64")
    errors = sgd_chunk(a, x, y, rates.tolist(), CompilePolicy(enabled=False))  # a list of rates is accepted too
    assert torch.equal(errors, _step_loop(b, x, y, rates))
    assert torch.equal(a.weight, b.weight)


class _CountingStudent(CommitteeStudent):
    """A user subclass with its own step (here: the error halved), counting its calls."""

    calls = 0

    def sgd_step(self, x, y, lr):
        type(self).calls += 1
        lam = self.fields(x)
        err = 0.5 * (y - self.readout(lam))
        self.first_layer_step(x, lam, err, lr)
        return err


def test_chunk_of_a_subclass_goes_through_its_own_step():
    """Never compiled (even when asked): a subclass's sgd_step is what runs, once per step."""
    x, y, rates = _chunk(7, replicas=2, batch=1, d=10)
    student = _CountingStudent(width=2, dim=10, replicas=2, seed=1, dtype="float64")
    reference = _CountingStudent(width=2, dim=10, replicas=2, seed=1, dtype="float64")
    policy = CompilePolicy(enabled=True)
    assert not policy.applies(student)
    errors = sgd_chunk(student, x, y, rates, policy)
    assert _CountingStudent.calls == 7
    assert torch.equal(errors, _step_loop(reference, x, y, rates))
    assert torch.equal(student.weight, reference.weight)
    assert not policy.applies(TrainedReadoutStudent(width=2, dim=10))


def test_automatic_compilation_depends_on_the_step_count_only():
    """CPU: step by step until after_steps steps, then compiled; the count is saved with the
    weights, so a resumed run switches at the same step as an uninterrupted one."""
    student = CommitteeStudent(width=2, dim=10, replicas=1, dtype="float64")
    policy = CompilePolicy(after_steps=12)
    x, y, rates = _chunk(6, replicas=1, batch=1, d=10)
    sgd_chunk(student, x, y, rates, policy)
    assert not policy.applies(student)
    sgd_chunk(student, x, y, rates, policy)
    assert policy.applies(student)
    resumed = CommitteeStudent(width=2, dim=10, replicas=1, dtype="float64")
    resumed.load_state_dict(student.state_dict())
    assert int(resumed.steps_taken) == 12 and CompilePolicy(after_steps=12).applies(resumed)
    custom = CommitteeStudent(width=2, dim=10, activation="torch.nn.functional.silu", dtype="float64")
    assert not CompilePolicy(enabled=True).applies(custom)  # autograd σ' does not compile into one graph


def test_automatic_compilation_only_for_small_students_on_the_cpu():
    """Past after_steps, the CPU compiles only while R·p·d < below_numbers: above it the
    eager step is as fast (scripts/benchmark_sgd.py)."""
    small, large = CommitteeStudent(width=2, dim=10, replicas=3), CommitteeStudent(width=2, dim=10, replicas=4)
    policy = CompilePolicy(after_steps=0, below_numbers=70)
    assert policy.applies(small) and not policy.applies(large)


def test_chunk_refuses_mismatched_lengths():
    x, y, rates = _chunk(5, replicas=1, batch=1, d=10)
    student = CommitteeStudent(width=2, dim=10, dtype="float64")
    with pytest.raises(ValueError, match="sgd_chunk: 5 steps"):
        sgd_chunk(student, x, y, rates[:4], CompilePolicy())
    assert int(student.steps_taken) == 0


class _BrokenCompiler:
    """Stands in for CompiledSteps where compiling fails (e.g. no C++ compiler)."""

    block, device = 4, torch.device("cpu")

    def __call__(self, *args):
        raise RuntimeError("no C++ compiler found")


def test_a_failed_compilation_falls_back_to_the_step_loop(caplog):
    x, y, rates = _chunk(10, replicas=2, batch=1, d=12)
    student = CommitteeStudent(width=3, dim=12, replicas=2, seed=6, dtype="float64")
    reference = CommitteeStudent(width=3, dim=12, replicas=2, seed=6, dtype="float64")
    policy = CompilePolicy(enabled=True)
    policy._compiled = _BrokenCompiler()
    errors = sgd_chunk(student, x, y, rates, policy)
    assert "compiling the SGD steps failed" in caplog.text and policy.enabled is False
    assert torch.equal(errors, _step_loop(reference, x, y, rates))
    assert torch.equal(student.weight, reference.weight)
