"""The order-parameter ODEs against SGD itself, against their own limits, and on bad input.

Reference values come from independent computations: Monte-Carlo averages of single SGD
steps of :mod:`phasesgd.sgd.networks`, fixed-step integrators, exact power laws of d, and the
facts of docs/theory.md §5 (plateau ∝ Δ on the blue line). Nothing is compared with numbers
copied from this code's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from problems import solve

from phasesgd.ode import (
    ODEBudgetExceeded,
    SolverOptions,
    TooManySteps,
    UnphysicalStateError,
    asymptotic_prefactors,
    finite_prefactors,
    solve_ode,
)
from phasesgd.ode.drift import OrderParameterDrift, Prefactors, check_physical
from phasesgd.sgd.data import GaussianStream
from phasesgd.sgd.networks import CommitteeStudent, Teacher, TrainedReadoutStudent
from phasesgd.theory.activations import get_activation
from phasesgd.theory.integrals import FieldActivations, i4, upsilon
from phasesgd.theory.order_parameters import Overlaps, order_parameters
from phasesgd.theory.physics import RunPhysics
from phasesgd.theory.scaling import Scaling
from phasesgd.theory.schedules import PowerLaw
from phasesgd.training.module import OnlineSGD

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second thread only waits


def _gaussian_rows(rows: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, d, generator=g, dtype=F64)
    return w * (math.sqrt(d) / w.norm(dim=1, keepdim=True))


def blue_line_init(p: int = 8, k: int = 4, d: int = 1000, seed: int = 0):
    """Q, M, P of a Gaussian student (Q_jj = 1, |M| ~ 1/√d) and an orthonormal teacher (P = I)."""
    W = _gaussian_rows(p, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    W_star = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64)).Q.T * math.sqrt(d)
    overlaps = order_parameters(W, W_star)
    return overlaps.Q, overlaps.M, torch.eye(k, dtype=F64)


# ----- drift = expected SGD increment ---------------------------------------------------

D_MC = 2000  # input dimension of the Monte-Carlo checks
CASES = {
    #              student, teacher, Δ,   B, trained a, weight decay
    "erf": ("erf", "erf", 0.5, 1, False, 0.0),
    "relu": ("relu", "relu", 0.1, 1, False, 0.0),
    "tanh": ("tanh", "tanh", 0.2, 1, False, 0.0),
    "linear": ("linear", "linear", 0.3, 1, False, 0.0),
    "mixed": ("erf", "relu", 0.2, 1, False, 0.0),
    "minibatch": ("erf", "erf", 0.5, 4, False, 0.0),
    "trained_readout_decay": ("erf", "erf", 0.2, 1, True, 0.5),
}


def _monte_carlo_increment(case: str, steps: int = 80_000, chunk: int = 2000):
    """Mean and standard error of one SGD step's (ΔQ, ΔM, Δa) over ``steps`` independent
    steps from one state, each taken by the simulation code on its own replica."""
    sigma, sigma_star, noise, B, trained, wd = CASES[case]
    p, k, d, gamma, lr_a = 3, 2, D_MC, 3.0, 2.0
    teacher = Teacher(
        width=k, dim=d, activation=sigma_star, noise=noise, second_layer=[1.0, 0.6], seed=1, dtype="float64"
    )
    # Overlaps of all signs and sizes: |M| up to ~0.7, unequal norms.
    W = 0.6 * teacher.weight[torch.arange(p) % k] + 0.8 * _gaussian_rows(p, d, seed=2)
    W = W / W.norm(dim=1, keepdim=True) * math.sqrt(d) * torch.tensor([[1.0], [0.8], [1.2]], dtype=F64)
    a = torch.tensor([1.2, 0.7, -0.5], dtype=F64)
    cls, extra = (TrainedReadoutStudent, {"second_layer_lr": lr_a}) if trained else (CommitteeStudent, {})
    student = cls(width=p, dim=d, activation=sigma, replicas=chunk, weight_decay=wd, dtype="float64", **extra)
    gen = torch.Generator().manual_seed(3)
    overlaps = order_parameters(W, teacher.weight)
    Q, M, P = overlaps.Q, overlaps.M, overlaps.P
    total, square = 0.0, 0.0
    for _ in range(steps // chunk):
        student.weight.data.copy_(W.expand(chunk, p, d))
        student.second_layer.data.copy_(a.expand(chunk, p))
        x = torch.randn(chunk, B, d, generator=gen, dtype=F64)
        y = teacher.labels(x, torch.randn(chunk, B, generator=gen, dtype=F64))
        student.sgd_step(x, y, gamma)
        overlaps = order_parameters(student.weight, teacher.weight)
        Q1, M1 = overlaps.Q, overlaps.M
        parts = [(Q1 - Q).flatten(1), (M1 - M).flatten(1)] + ([student.second_layer - a] if trained else [])
        inc = torch.cat(parts, 1)
        total, square = total + inc.sum(0), square + (inc**2).sum(0)
    n = (steps // chunk) * chunk
    mean = total / n
    se = ((square / n - mean**2) / n).sqrt()
    fields = FieldActivations(get_activation(sigma), get_activation(sigma_star), p)
    kwargs = dict(
        noise=noise,
        second_layer=a,
        teacher_second_layer=teacher.second_layer,
        train_second_layer=trained,
        weight_decay=wd,
        batch_size=B,
    )
    coeff = finite_prefactors(Scaling(), gamma, p, d, lr_a if trained else None)
    return mean, se, (Q, M, a, P), fields, coeff, kwargs


@pytest.mark.parametrize("case", list(CASES))
def test_drift_is_the_expected_sgd_increment(case):
    """drift/τ (finite mode, τ = d) = E[one SGD step of networks.py], entry by entry.

    Tolerance: 4.5 Monte-Carlo standard errors plus 3(n+1)/d of the size of each term:
    the ODE drops O(n/d) relative terms (|x|²/d = 1 in the quadratic term, the square of
    the weight-decay factor, the product of two samples' means in a mini-batch).
    """
    # the same number of samples for every case: B samples per step
    mean, se, (Q, M, a, P), fields, coeff, kwargs = _monte_carlo_increment(case, steps=80_000 // CASES[case][3])
    drift = OrderParameterDrift(P, fields, coeff, **kwargs)
    t = torch.zeros((), dtype=F64)
    y = drift.pack(Q, M, a)
    tau = D_MC
    predicted = drift(t, y) / tau
    # size of each term: the drift (c1) and noise (c2) parts separately, in absolute value
    only_c1 = OrderParameterDrift(P, fields, Prefactors(coeff.drift, 0.0, coeff.readout), **kwargs)(t, y).abs()
    only_c2 = OrderParameterDrift(P, fields, Prefactors(0.0, coeff.noise, coeff.readout), **kwargs)(t, y).abs()
    n = fields.p + P.shape[0]
    tol = 4.5 * se + 3 * (n + 1) / D_MC * (only_c1 + only_c2) / tau
    assert torch.all((mean - predicted).abs() <= tol), (
        f"{case}: worst |MC − drift|/tol = {float(((mean - predicted).abs() / tol).max()):.2f}"
        f"\nMC {mean}\ndrift {predicted}\nse {se}"
    )
    # The check has power: the noise term is many standard errors large in Q's entries.
    noise_part = only_c2[: fields.p**2] / tau
    assert float((noise_part / se[: fields.p**2]).max()) > 10


# ----- finite mode → asymptotic mode -------------------------------------------------------

REGIONS = {  # (κ, δ): exponent of d in |finite − asymptotic|
    "perfect": ((0.0, 0.5), -0.5),  # c2 = (γ0/p0)² d^(−(κ+δ)) → 0
    "plateau": ((0.0, 0.0), None),  # identical at every d
    "bad": ((0.0, -0.25), -0.25),  # c1 = (γ0/p0) d^(κ+δ) → 0
}


@pytest.mark.parametrize("kappa,delta,power", [(0.5, 0.0, -0.5), (0.5, -0.5, 0.0), (0.5, -0.6, -0.1), (0.0, 0.3, -0.3)])
def test_finite_prefactors_converge_to_the_asymptotic_ones(kappa, delta, power):
    """With p = p0 d^κ: c1, c2 of §5 at finite d approach their limits like d^power."""
    scaling, gamma0, p0 = Scaling(kappa=kappa, delta=delta), 2.0, 4
    gaps = []
    for d in (10**4, 10**6, 10**8):
        p = scaling.width(p0, d)
        fin, asym = finite_prefactors(scaling, gamma0, p, d), asymptotic_prefactors(scaling, gamma0, p, d)
        scale = max(asym.drift, asym.noise)
        gaps.append((abs(fin.drift - asym.drift) + abs(fin.noise - asym.noise)) / scale)
    if power == 0.0:
        assert max(gaps) < 1e-12
    else:
        assert math.log(gaps[1] / gaps[2]) / math.log(100) == pytest.approx(-power, abs=0.02)


@pytest.mark.parametrize("region", list(REGIONS))
def test_finite_ode_converges_to_the_asymptotic_ode(region):
    """Risk curves of the finite-size ODE approach those of the limit ODE like d^power."""
    (kappa, delta), power = REGIONS[region]
    Q, M, P = blue_line_init(p=4, k=2)
    common = dict(
        gamma0=2.0, delta=delta, kappa=kappa, noise=1e-2, t_eval=np.linspace(0.0, 3.0, 7), rtol=1e-10, atol=1e-12
    )
    limit = solve(Q, M, P, mode="asymptotic", **common).risk
    gaps = [np.abs(solve(Q, M, P, mode="finite", d=d, **common).risk - limit).max() for d in (10**4, 10**6)]
    if power is None:
        assert max(gaps) < 1e-10
    else:
        assert gaps[1] > 0 and math.log(gaps[0] / gaps[1]) / math.log(100) == pytest.approx(-power, rel=0.1)


# ----- integrators ------------------------------------------------------------------------------


def test_dopri5_agrees_with_fixed_step_rk4():
    """Adaptive dopri5 against classic RK4 at dt = 1e-2 (error ~dt⁴), with a schedule,
    weight decay and a trained second layer."""
    Q, M, P = blue_line_init(p=4, k=2)
    common = dict(
        gamma0=4.0,
        noise=1e-2,
        t_eval=np.linspace(0.0, 5.0, 11),
        second_layer=np.ones(4),
        second_layer_lr=1.0,
        weight_decay=0.1,
        lr_factor=PowerLaw(t0=2.0).factor,
    )
    adaptive = solve(Q, M, P, method="dopri5", rtol=1e-9, atol=1e-11, **common)
    fixed = solve(Q, M, P, method="rk4", step_size=1e-2, **common)
    for name in ("risk", "Q", "M", "a"):
        np.testing.assert_allclose(getattr(adaptive, name), getattr(fixed, name), rtol=0, atol=1e-6, err_msg=name)
    assert np.abs(adaptive.Q[-1] - adaptive.Q[0]).max() > 1e-2  # it moved


def test_stiff_solver_agrees_with_dopri5_through_the_plateau():
    Q, M, P = blue_line_init()
    common = dict(gamma0=8.0, noise=1e-3, t_eval=np.array([10.0, 100.0, 300.0]), rtol=1e-8, atol=1e-11)
    explicit, implicit = solve(Q, M, P, **common), solve(Q, M, P, method="BDF", **common)
    np.testing.assert_allclose(implicit.risk, explicit.risk, rtol=1e-4)


@pytest.mark.parametrize("act", ["erf", "relu"])
def test_jacobian_matches_central_differences_of_the_drift(act):
    """The forward-difference Jacobian (j ≤ l columns of Q only, copied to l > j) against
    central differences of the drift taken coordinate by coordinate, over Q, M and a."""
    Q, M, P = blue_line_init(p=3, k=2, d=50)
    fields = FieldActivations(get_activation(act), get_activation(act), 3)
    prefactors = asymptotic_prefactors(Scaling(), 4.0, 3, second_layer_lr=1.0)
    drift = OrderParameterDrift(P, fields, prefactors, noise=1e-2, train_second_layer=True)
    y = drift.pack(Q, M, torch.tensor([0.9, 1.1, 1.0], dtype=F64))
    t, h = torch.tensor(0.0, dtype=F64), 1e-6
    central = torch.stack(
        [(drift(t, y + h * e) - drift(t, y - h * e)) / (2 * h) for e in torch.eye(y.shape[-1], dtype=F64)], -1
    )
    jac = drift.jacobian(t, y)
    assert (jac - central).abs().max() < 1e-6 * central.abs().max()
    assert torch.equal(jac[:, 0 * 3 + 1], jac[:, 1 * 3 + 0])  # Q_01 and Q_10 share a column


def test_step_budget_falls_back_to_the_stiff_solver():
    Q, M, P = blue_line_init(p=4, k=2)
    with pytest.warns(UserWarning, match="continuing with BDF"):
        sol = solve(Q, M, P, gamma0=4.0, noise=1e-2, t_eval=[0.0, 50.0], method="dopri5", max_steps=5)
    assert sol.method == "dopri5+BDF"
    reference = solve(Q, M, P, gamma0=4.0, noise=1e-2, t_eval=[0.0, 50.0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sol.risk, reference.risk, rtol=1e-3)


@pytest.mark.slow
def test_auto_solver_matches_a_tight_reference_on_the_blue_line(caplog):
    """method='auto' (the default) on the blue line to t = 1000 (p = 8, k = 4): it leaves
    dopri5 for BDF in the stiff tail (logged), and its risk curve stays within 1e-6 of the
    largest risk of a dopri8 solve at rtol 1e-12 (the default tolerances), and within 1e-6
    of the reference at every time with rtol 1e-8."""
    Q, M, P = blue_line_init()
    common = dict(gamma0=8.0, noise=1e-3, t_eval=np.linspace(0.0, 1000.0, 41))
    reference = solve(Q, M, P, method="dopri8", rtol=1e-12, atol=1e-14, **common).risk
    with caplog.at_level("INFO", logger="phasesgd.ode.integrate"):
        default = solve(Q, M, P, **common)
    assert default.method == "dopri5+BDF" and "then BDF" in caplog.text
    assert np.abs(default.risk - reference).max() < 1e-6 * reference.max()
    tight = solve(Q, M, P, rtol=1e-8, atol=1e-11, **common)
    np.testing.assert_allclose(tight.risk, reference, rtol=1e-6, atol=0)
    assert reference[-1] < 1e-2 * reference[0]  # the curve spans the plateau and its end


@pytest.mark.parametrize("method", ["auto", "dopri5", "BDF", "rk4"])
def test_budget_stops_every_solver(method):
    """max_evaluations and max_seconds raise ODEBudgetExceeded whatever the method (the
    stiff switch and the Jacobians included)."""
    Q, M, P = blue_line_init()
    common = dict(gamma0=8.0, noise=1e-3, t_eval=[0.0, 1000.0], method=method, step_size=0.5)
    with pytest.raises(ODEBudgetExceeded, match="more than 50 drift evaluations"):
        solve(Q, M, P, max_evaluations=50, **common)
    with pytest.raises(ODEBudgetExceeded, match="out of wall time"):
        solve(Q, M, P, max_seconds=0.05, **common)


def test_solver_settings_are_one_object_or_a_method_name():
    """A method's name is shorthand for SolverOptions(method=…); bad values are refused naming them."""
    Q, M, P = blue_line_init(p=4, k=2)
    start, physics = Overlaps(Q, M, P), RunPhysics(gamma0=4.0, noise=1e-2)
    by_name = solve_ode(start, physics, [0.0, 5.0], solver="rk4").risk
    by_object = solve_ode(start, physics, [0.0, 5.0], solver=SolverOptions(method="rk4")).risk
    np.testing.assert_array_equal(by_name, by_object)
    with pytest.raises(ValueError, match="method"):
        solve_ode(start, physics, [0.0, 5.0], solver="rk5")
    with pytest.raises(ValueError, match="max_steps"):
        SolverOptions(max_steps=0)
    with pytest.raises(ValueError, match="threads"):
        SolverOptions(threads=0)


def test_solve_restores_the_thread_count():
    Q, M, P = blue_line_init(p=4, k=2)
    before = torch.get_num_threads()
    solve(Q, M, P, gamma0=4.0, t_eval=[0.0, 1.0], threads=2)
    assert torch.get_num_threads() == before


def test_too_many_steps_without_fallback_raises():
    Q, M, P = blue_line_init(p=4, k=2)
    with pytest.raises(TooManySteps, match="max_steps=5"):
        solve(Q, M, P, gamma0=4.0, noise=1e-2, t_eval=[0.0, 50.0], method="dopri5", max_steps=5, fallback=None)


# ----- physics: docs/theory.md §5 ------------------------------------------------------------------------


def test_blue_line_plateau_is_proportional_to_noise():
    """k = 4, p = 8, γ0 = 8, erf, P = I: R(t → ∞) ≈ 0.1 Δ for Δ = 1e-2, 1e-3, 1e-4, and at
    Δ = 0 the risk keeps decaying. Solved as one batch of four runs by BDF (stiff tail)."""
    Q, M, P = blue_line_init()
    noise = np.array([1e-2, 1e-3, 1e-4, 0.0])
    sol = solve(Q, M, P, gamma0=8.0, noise=noise, t_eval=[1e3, 3e3, 1e4], method="BDF")
    assert sol.risk.shape == (4, 3)
    ratio = sol.risk[:3, -1] / noise[:3]
    assert ratio.max() / ratio.min() < 1.2
    assert np.all((0.05 < ratio) & (ratio < 0.2))
    assert sol.risk[3, -1] < 0.5 * sol.risk[3, -2] < 0.25 * sol.risk[3, 0]  # no floor at Δ = 0
    assert sol.risk[3, -1] < 0.1 * 1e-4 * ratio.min()  # far below the smallest noisy plateau


def test_learning_rate_factor_acts_as_gamma():
    """g(t) multiplies γ: a constant factor ½ equals γ0 halved (c1 ∝ g, c2 ∝ g²)."""
    Q, M, P = blue_line_init(p=4, k=2)
    common = dict(noise=1e-2, t_eval=np.linspace(0, 20, 5), mode="finite", d=1000, rtol=1e-10, atol=1e-12)
    halved = solve(Q, M, P, gamma0=4.0, lr_factor=lambda t: torch.full_like(t, 0.5), **common)
    direct = solve(Q, M, P, gamma0=2.0, **common)
    np.testing.assert_allclose(halved.risk, direct.risk, rtol=1e-7)


def test_batched_solve_equals_separate_solves():
    inits = [blue_line_init(p=4, k=2, seed=s) for s in (0, 5)]
    Q0, M0 = torch.stack([i[0] for i in inits]), torch.stack([i[1] for i in inits])
    P, t = inits[0][2], np.linspace(0.0, 10.0, 4)
    batched = solve(Q0, M0, P, gamma0=np.array([2.0, 3.0]), noise=1e-2, t_eval=t, rtol=1e-10, atol=1e-12)
    assert batched.risk.shape == (2, 4) and batched.Q.shape == (2, 4, 4, 4) and batched.M.shape == (2, 4, 4, 2)
    for b, gamma0 in enumerate((2.0, 3.0)):
        alone = solve(Q0[b], M0[b], P, gamma0=gamma0, noise=1e-2, t_eval=t, rtol=1e-10, atol=1e-12)
        assert alone.risk.shape == (4,) and alone.Q.shape == (4, 4, 4)
        np.testing.assert_allclose(batched.risk[b], alone.risk, rtol=1e-6)


@pytest.mark.parametrize("act", ["erf", "relu"])
def test_chunked_upsilon_equals_the_whole_tensor(act):
    """Υ (each unordered (j, l) once, in chunks of one pair) equals the contraction of the
    whole I4 tensor Σ_cd w_c w_d I4[j, l, c, d], for a batch with its own weights."""
    p, k = 7, 3
    A = torch.randn(p + k, p + k, generator=torch.Generator().manual_seed(0), dtype=F64)
    omega = (A @ A.T / (p + k) + 0.3 * torch.eye(p + k, dtype=F64))[None].repeat(2, 1, 1)
    omega[1] *= 1.5
    w = torch.randn(2, p + k, generator=torch.Generator().manual_seed(1), dtype=F64)
    fields = FieldActivations(get_activation(act), get_activation(act), p)
    whole = torch.einsum("bjlcd,bc,bd->bjl", i4(omega, fields), w, w)
    torch.testing.assert_close(upsilon(omega, fields, w), whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(upsilon(omega, fields, w, max_entries=1), whole, rtol=1e-12, atol=1e-14)


def test_module_prediction_follows_the_simulation():
    """The ODE built from a module (trained readout, weight decay, mini-batches, schedule)
    against the ensemble mean of its own SGD steps at d = 1000."""
    d, R = 1000, 64
    teacher = Teacher(width=2, dim=d, noise=1e-2, dtype="float64")
    student = TrainedReadoutStudent(width=4, dim=d, replicas=R, weight_decay=0.2, second_layer_lr=1.0, dtype="float64")
    lr = PowerLaw(gamma0=3.0, t0=1.0, beta=0.5)
    module = OnlineSGD(teacher, student, GaussianStream(batch_size=2), lr, t_max=1.0)
    assert module.population_risk().mean() > 0
    sol = module.predict(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(sol.risk[:, 0], module.population_risk().numpy(), rtol=1e-10)
    gen = torch.Generator().manual_seed(0)
    for step in range(d):  # t = ν/d up to 1
        x = torch.randn(R, 2, d, generator=gen, dtype=F64)
        y = teacher.labels(x, torch.randn(R, 2, generator=gen, dtype=F64))
        student.sgd_step(x, y, float(module.learning_rates(step, step + 1)[0]))
    simulated, ode = module.population_risk().numpy(), sol.risk[:, 2].mean()
    assert ode < 0.8 * sol.risk[:, 0].mean()  # it learned
    # 4 standard errors of the ensemble mean + 1 % for O(1/d); B = 1 instead of 2, no weight
    # decay or no schedule would each move the ODE by more than 2 %.
    assert abs(simulated.mean() - ode) < 4 * simulated.std() / math.sqrt(R) + 0.01 * ode
    moved_ode, moved_sgd = sol.a[:, -1].mean(0) - 1.0, student.second_layer.mean(0).numpy() - 1.0
    np.testing.assert_allclose(moved_ode, moved_sgd, rtol=0.1)


# ----- guards and refused input -----------------------------------------------------------------


def test_leaving_the_physical_region_stops_with_the_time():
    Q, M, P = blue_line_init(p=4, k=2)
    with pytest.raises(UnphysicalStateError, match=r"t=.*"):
        solve(Q, M, P, gamma0=4.0, noise=1e-2, t_eval=[0.0, 400.0], method="euler", step_size=40.0)
    omega = torch.eye(3, dtype=F64)
    omega[0, 1] = omega[1, 0] = 1.5
    with pytest.raises(UnphysicalStateError, match=r"not positive definite at t=2\.5; smallest eigenvalue -5\.000e-01"):
        check_physical(omega, 2.5)


GOOD = dict(gamma0=1.0, t_eval=[0.0, 1.0])


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(gamma0=0.0), "gamma0"),
        (dict(gamma0=np.array([1.0, -1.0])), "gamma0"),
        (dict(noise=-1e-3), "noise"),
        (dict(t_eval=[1.0, 0.5]), "t_eval"),
        (dict(t_eval=[-1.0, 1.0]), "t_eval"),
        (dict(mode="finite"), r"\bd\b.*finite"),
        (dict(mode="finite", d=0), "d must be"),
        (dict(mode="exact"), "mode"),
        (dict(method="magic"), "method"),
        (dict(batch_size=0), "batch_size"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(delta=-0.6), r"no deterministic limit.*|kappa=0\.0, delta=-0\.6"),
        (dict(kappa=1.0, delta=-1.0), "d is required"),
        (dict(delta=0.5, theta=1.0), "theta"),
        (dict(second_layer_lr=1.0, delta=0.5), "second-layer"),
        (dict(M0=np.zeros((3, 2))), "M0"),
        (dict(Q0=np.ones((2, 3))), "Q0"),
        (dict(P=np.ones((2, 2, 2))), "P"),
        (dict(Q0=np.array([[1.0, 2.0], [2.0, 1.0]])), "Q0, M0, P"),
        (dict(second_layer=np.ones(3)), "second_layer"),
    ],
)
def test_bad_input_is_refused_naming_the_parameter(change, match):
    args = dict(Q0=np.eye(2), M0=np.zeros((2, 1)), P=np.eye(1), **GOOD)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        solve(args.pop("Q0"), args.pop("M0"), args.pop("P"), **args)


def test_no_ode_region_is_refused_in_both_modes():
    for mode in ("asymptotic", "finite"):
        with pytest.raises(ValueError, match=r"kappa=0\.0, delta=-0\.5.*no deterministic limit"):
            solve(np.eye(2), np.zeros((2, 1)), np.eye(1), gamma0=1.0, delta=-0.5, d=100, mode=mode, t_eval=[0.0, 1.0])


def test_every_method_name_has_one_solver():
    """The names SolverOptions accepts and the registry that integrates them are the same set."""
    from phasesgd.ode.integrate import SOLVERS
    from phasesgd.ode.options import METHODS

    assert set(SOLVERS) == set(METHODS) and len(METHODS) == len(set(METHODS))
