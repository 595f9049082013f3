"""The predicted spread of a replica (docs/theory.md §8): the linear-noise covariance against
the simulations' own spread, with a negative control, and its parts against independent
computations (the initial law by Monte Carlo, the stepped covariance against Lyapunov)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import QUIET

from phasesgd.app.train import train
from phasesgd.ode import solve_ode
from phasesgd.ode.fluctuations import (
    Fluctuations,
    _step_covariance,
    initial_covariance,
    lyapunov,
)
from phasesgd.ode.solve import predicted_concentration
from phasesgd.sgd.networks import init_rows
from phasesgd.theory.order_parameters import Overlaps
from phasesgd.theory.physics import RunPhysics

RUN = [*QUIET, "callbacks.order_parameters=null", "callbacks.ode.fluctuations=true", "replicas=256", "seed=3"]


def _z_sd(results: dict, sd_Q: np.ndarray, sd_M: np.ndarray, t_min: float) -> float:
    """sd of (simulation − own ODE)/predicted sd, pooled over replicas, entries Q_jl (j ≤ l),
    M_jr and the measurement times t ≥ t_min where the band is valid (the sd is 0 at t = 0).
    ``sd_Q``, ``sd_M``: (T, R or 1, …) like ``Q_ode``, ``M_ode``."""
    keep = (results["t"] >= t_min) & results["ode_band_valid"]
    p = results["Q_t"].shape[-1]
    j, l = np.triu_indices(p)
    zQ = ((results["Q_t"][keep] - results["Q_ode"][keep]) / sd_Q[keep])[..., j, l]
    zM = (results["M_t"][keep] - results["M_ode"][keep]) / sd_M[keep]
    return float(np.concatenate([zQ.ravel(), zM.ravel()]).std())


CELLS = {  # (κ, δ) cells of the diagram; the blue line's is the default experiment's
    "blue line": ["d=250", "t_max=30"],
    "bad learning (0, -1/4)": ["d=400", "t_max=3", "lr.delta=-0.25", "lr.gamma0=1.0"],
    "perfect learning (0, 1/2)": ["d=100", "t_max=3", "lr.delta=0.5", "lr.gamma0=1.0"],
    "kappa > 0 (1/2, -3/4)": [
        "d=64",
        "t_max=3",
        "kappa=0.5",
        "student.width=1",
        "teacher.width=1",
        "lr.delta=-0.75",
        "lr.gamma0=2.0",
    ],
}


@pytest.mark.parametrize("cell", list(CELLS))
def test_predicted_spread_is_the_simulations_own(make_config, tmp_path, cell, one_thread):
    module = train(make_config(*RUN, *CELLS[cell]))
    results = dict(np.load(tmp_path / "results.npz"))
    assert "valid throughout" in str(results["ode_status"])
    assert (
        abs(_z_sd(results, results["Q_ode_sd"], results["M_ode_sd"], t_min=1.0 if cell == "blue line" else 0.3) - 1)
        < 0.1
    )
    if cell != "blue line":
        return
    # Negative control: the spread predicted for a d off by half (a wrong theory) fails the same test.
    physics = dataclasses.replace(module.ode_physics(), d=int(1.5 * module.dim))
    h = module.history
    wrong = solve_ode(
        Overlaps(h.Q[0].mean(0), h.M[0].mean(0), results["P"]), physics, results["t"], mode="finite", fluctuations=True
    ).spread
    assert abs(_z_sd(results, wrong.Q[:, None], wrong.M[:, None], t_min=1.0) - 1) > 0.1


def test_auto_leaves_the_spread_out_when_it_costs_more_than_the_run(make_config):
    module = train(make_config(*QUIET, "d=60", "t_max=0.5", "replicas=2", "callbacks.order_parameters=null"))
    assert "spread off: it would take about" in module.prediction.status and module.prediction.band is None


def _draw(p: int, d: int, init: str, gen: torch.Generator) -> torch.Tensor:
    if init == "gaussian":
        return init_rows(p, d, init, gen)
    q, r = torch.linalg.qr(torch.randn(d, p, generator=gen, dtype=torch.float64))
    return (q * r.diagonal().sign()).T * d**0.5  # Haar: the signs of R's diagonal fixed


def test_initial_covariance_is_that_of_drawn_students():
    """Cov[X(0)] in closed form against 20000 drawn students: independent rows uniform on the
    sphere (the networks' 'gaussian'), and Haar-random orthonormal frames. The networks'
    'orthonormal' draw is a QR without the sign fix, which is not Haar (docs/theory.md §8)."""
    d, p, k = 30, 3, 2
    teacher = init_rows(k, d, "gaussian", torch.Generator().manual_seed(0))
    P = teacher @ teacher.T / d
    for init in ("gaussian", "orthonormal"):
        gen = torch.Generator().manual_seed(1)
        W = torch.stack([_draw(p, d, init, gen) for _ in range(20000)])
        X = torch.cat([(W @ W.transpose(1, 2) / d).flatten(1), (W @ teacher.double().T / d).flatten(1)], 1)
        C = torch.cov(X.T)
        exact = initial_covariance(P.double(), p, d, init)
        se = (C.diagonal()[:, None] * C.diagonal()[None, :] + C**2).sqrt() / np.sqrt(20000)
        assert ((C - exact).abs() <= 4 * se + 1e-12).all(), init
        assert (exact.diagonal()[: p * p].abs() > 0).any() == (init == "gaussian")


def test_stepped_covariance_reaches_the_lyapunov_one():
    """C stepped by Van Loan's exponential from 0 tends to the solution of J C + C Jᵀ + D = 0,
    and one small step agrees with dC/dt = D at C = 0."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    J = -(A @ A.T) / 5 - 0.3 * torch.eye(5, dtype=torch.float64) + 0.2 * (A - A.T)
    B = torch.randn(5, 5, generator=g, dtype=torch.float64)
    D = B @ B.T
    C = torch.zeros(5, 5, dtype=torch.float64)
    for _ in range(400):
        C = _step_covariance(C, J, D, 0.25)
    assert torch.allclose(C, lyapunov(J, D), rtol=1e-8, atol=1e-10)
    assert torch.allclose(_step_covariance(torch.zeros_like(D), J, D, 1e-6) / 1e-6, D, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not a stable fixed point"):
        lyapunov(-J, D)


def test_the_band_is_marked_where_the_symmetric_plateau_is_escaped():
    """From a symmetric start the ODE stays on the symmetric plateau while the noise along its
    unstable direction grows: the band holds at first, then is marked invalid for good."""
    t = np.geomspace(0.5, 400, 25)
    sol = solve_ode(
        Overlaps(np.eye(2), np.zeros((2, 2)), np.eye(2)),
        RunPhysics(gamma0=1.0, d=1000),
        t,
        mode="finite",
        fluctuations=Fluctuations(steps=400),
    )
    valid = sol.spread.valid
    assert valid[: len(t) // 2].all() and not valid[-1]
    assert not valid[np.argmin(valid) :].any()  # once invalid, never valid again


@pytest.mark.parametrize("delta,low,high", [(0.0, 0.48, 0.52), (0.5, 0.48, 0.52), (-0.25, 0.0, 0.45)])
def test_predicted_concentration_follows_the_scaling_of_the_noise(delta, low, high):
    """c from the predicted single-entry spread at d = 10³, 10⁴, 10⁵ (k = p = 1, t* = 10): ½ on
    the blue line and in perfect learning (D and Cov[X(0)] both ∝ 1/d), below ½ in bad
    learning, where the noise grows with d relative to the drift (docs/theory.md §8)."""
    cases = [
        (Overlaps(np.eye(1), np.zeros((1, 1)), np.eye(1)), RunPhysics(gamma0=1.0, noise=1e-3, d=d, delta=delta), 10.0)
        for d in (1000, 10000, 100000)
    ]
    c, spreads = predicted_concentration(cases)
    assert low < c < high and np.all(np.diff(spreads) < 0)
