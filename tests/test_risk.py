"""Population risk from (Q, M, P) against Monte Carlo over the Gaussian local fields."""

from __future__ import annotations

import math

import pytest
import torch

from phasesgd.theory.activations import get_activation
from phasesgd.theory.order_parameters import order_parameters, risk_from_overlaps

P_UNITS, K_UNITS = 3, 2


def random_overlaps(seed: int):
    """A valid covariance Ω = G Gᵀ/m of p + k fields, split into Q, M, P."""
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(P_UNITS + K_UNITS, 6, generator=gen, dtype=torch.float64) / math.sqrt(6)
    omega = G @ G.T + 0.2 * torch.eye(P_UNITS + K_UNITS, dtype=torch.float64)
    return omega[:P_UNITS, :P_UNITS], omega[:P_UNITS, P_UNITS:], omega[P_UNITS:, P_UNITS:], omega


def monte_carlo_risk(omega, student, teacher, a, a_star, samples=2_000_000, seed=0):
    """½ E[(f* − f)²] from fields λ ~ N(0, Ω), with its standard error."""
    gen = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(omega)
    z = torch.randn(samples, omega.shape[0], generator=gen, dtype=torch.float64)
    fields = z @ L.T
    f = get_activation(student)(fields[:, :P_UNITS]) @ a / P_UNITS
    f_star = get_activation(teacher)(fields[:, P_UNITS:]) @ a_star / K_UNITS
    loss = 0.5 * (f_star - f) ** 2
    return loss.mean().item(), (loss.std() / math.sqrt(samples)).item()


@pytest.mark.parametrize(
    "student, teacher",
    [("erf", "erf"), ("relu", "relu"), ("linear", "linear"), ("erf", "relu"), ("tanh", "erf"), ("erf", "linear")],
)
def test_risk_from_overlaps_matches_monte_carlo(student, teacher):
    # a fixed seed per pair: hash() of a str is randomised per process
    seed = sum(map(ord, student + "/" + teacher))
    Q, M, P, omega = random_overlaps(seed=seed)
    a = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    a_star = torch.tensor([0.7, 1.3], dtype=torch.float64)
    exact = risk_from_overlaps(Q, M, P, student, teacher, a, a_star).item()
    mc, se = monte_carlo_risk(omega, student, teacher, a, a_star)
    assert abs(exact - mc) < 4 * se + 1e-9, (exact, mc, se)


def test_risk_is_batched_over_replicas_and_zero_for_a_perfect_student():
    Q, M, P, _ = random_overlaps(seed=1)
    batch = torch.stack([Q, 2 * Q])
    Mb = torch.stack([M, M])
    risks = risk_from_overlaps(batch, Mb, P)
    torch.testing.assert_close(risks[0], risk_from_overlaps(Q, M, P))
    torch.testing.assert_close(risks[1], risk_from_overlaps(2 * Q, M, P))
    # A student that copies the teacher twice (p = 2k) has zero risk.
    W_star = torch.randn(2, 400, dtype=torch.float64)
    overlaps = order_parameters(torch.cat([W_star, W_star]), W_star)
    Q0, M0, P0 = overlaps.Q, overlaps.M, overlaps.P
    assert abs(risk_from_overlaps(Q0, M0, P0).item()) < 1e-12
