"""One SGD step: analytic update against autograd and against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from phasesgd.sgd.networks import CommitteeStudent, Teacher, TrainedReadoutStudent
from phasesgd.theory.activations import get_activation

pytestmark = pytest.mark.usefixtures("float64_default")  # float64 tensors by default in this file


def _setup(activation: str, replicas: int = 3, batch: int = 2, d: int = 50, p: int = 5):
    student = CommitteeStudent(width=p, dim=d, activation=activation, replicas=replicas, seed=3, dtype="float64")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(replicas, batch, d, generator=gen)
    y = torch.randn(replicas, batch, generator=gen)
    return student, x, y


@pytest.mark.parametrize("activation", ["erf", "relu", "linear", "tanh", "torch.nn.functional.silu"])
def test_analytic_step_equals_autograd(activation):
    student, x, y = _setup(activation)
    lr = 0.7
    w = student.weight.detach().clone().requires_grad_(True)
    lam = torch.bmm(x, w.transpose(1, 2)) / math.sqrt(student.dim)
    f = get_activation(activation)(lam).mean(-1)
    # The step of docs/theory.md §1 (γ/p) a_j e σ'(λ_j) x/√d is plain SGD w ← w − γ ∇_w ℓ: the 1/p sits in f.
    loss = (0.5 * ((y - f) ** 2).mean(-1)).sum()
    (grad,) = torch.autograd.grad(loss, w)
    expected = w.detach() - lr * grad
    student.sgd_step(x, y, lr)
    torch.testing.assert_close(student.weight, expected, rtol=1e-12, atol=1e-12)


def test_analytic_step_equals_hand_computation():
    """w_j ← w_j + (γ/p) a_j (y − f) σ'(λ_j) x/√d, written as plain loops (B = 1)."""
    student, x, y = _setup("erf", replicas=2, batch=1, d=7, p=3)
    lr = 0.3
    w0 = student.weight.clone()
    student.sgd_step(x, y, lr)
    d, p = 7, 3
    for r in range(2):
        xv = x[r, 0]
        lam = [float(w0[r, j] @ xv) / math.sqrt(d) for j in range(p)]
        f = sum(math.erf(l / math.sqrt(2)) for l in lam) / p
        err = float(y[r, 0]) - f
        for j in range(p):
            dsig = math.sqrt(2 / math.pi) * math.exp(-(lam[j] ** 2) / 2)
            expected = w0[r, j] + (lr / p) * err * dsig * xv / math.sqrt(d)
            torch.testing.assert_close(student.weight[r, j], expected, rtol=1e-12, atol=1e-12)


def test_trained_readout_step_equals_autograd():
    """a moves by −(γ_a) ∂ℓ/∂a_j · p with γ_a = second_layer_lr/d; W as in the fixed case."""
    student = TrainedReadoutStudent(
        width=4, dim=30, activation="erf", replicas=2, seed=1, dtype="float64", second_layer_lr=2.0
    )
    with torch.no_grad():
        student.second_layer.mul_(torch.linspace(0.5, 1.5, 4))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 30, generator=gen), torch.randn(2, 3, generator=gen)
    w = student.weight.detach().clone().requires_grad_(True)
    a = student.second_layer.detach().clone().requires_grad_(True)
    lam = torch.bmm(x, w.transpose(1, 2)) / math.sqrt(30)
    f = (torch.erf(lam / math.sqrt(2)) * a[:, None, :]).sum(-1) / 4
    loss = (0.5 * ((y - f) ** 2).mean(-1)).sum()
    gw, ga = torch.autograd.grad(loss, (w, a))
    lr = 0.5
    student.sgd_step(x, y, lr)
    torch.testing.assert_close(student.weight, w.detach() - lr * gw, rtol=1e-12, atol=1e-12)
    # ∂ℓ/∂a_j = −(1/(pB)) Σ_b e σ(λ_j), so the step (γ_a/(pB)) Σ_b e σ(λ_j) is a ← a − γ_a ∂ℓ/∂a.
    torch.testing.assert_close(student.second_layer, a.detach() - (2.0 / 30) * ga, rtol=1e-12, atol=1e-12)


def test_weight_decay_shrinks_before_the_gradient_step():
    student, x, y = _setup("erf")
    decayed = CommitteeStudent(width=5, dim=50, activation="erf", replicas=3, seed=3, dtype="float64", weight_decay=0.4)
    lr = 0.7
    student.sgd_step(x, y, lr)
    w0 = decayed.weight.clone()
    decayed.sgd_step(x, y, lr)
    shrink = 1 - lr * 0.4 / (5 * 50)
    torch.testing.assert_close(decayed.weight - student.weight, (shrink - 1) * w0, rtol=1e-10, atol=1e-12)


def test_initialisations_have_the_documented_overlaps():
    teacher = Teacher(width=4, dim=200, init="orthonormal", dtype="float64")
    P = teacher.weight @ teacher.weight.T / 200
    torch.testing.assert_close(P, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    student = CommitteeStudent(width=6, dim=200, replicas=2, dtype="float64")
    norms = (student.weight**2).sum(-1) / 200
    torch.testing.assert_close(norms, torch.ones(2, 6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_teacher_labels_follow_the_committee_formula():
    teacher = Teacher(
        width=3, dim=20, activation="tanh", noise=0.25, second_layer=[1.0, -2.0, 0.5], init="gaussian", dtype="float64"
    )
    gen = torch.Generator().manual_seed(5)
    x, xi = torch.randn(4, 20, generator=gen), torch.randn(4, generator=gen)
    lam = x @ teacher.weight.T / math.sqrt(20)
    expected = (torch.tanh(lam) * torch.tensor([1.0, -2.0, 0.5])).sum(-1) / 3 + 0.5 * xi
    torch.testing.assert_close(teacher.labels(x, xi), expected)


def test_width_scales_with_kappa():
    assert CommitteeStudent(width=2, dim=100, kappa=0.5).width == 20
    assert CommitteeStudent(width=8, dim=100, kappa=0.0).width == 8
