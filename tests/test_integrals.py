"""Tests of phasesgd.theory.integrals against independent computations.

References are Monte-Carlo estimates over Gaussian fields drawn here with torch
(tolerance: a few standard errors, computed from the samples), closed forms derived
independently in this file, and cross-checks between the closed-form and generic
quadrature routes. No expected number is copied from the module's own output.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from phasesgd.theory.activations import Activation, autograd_derivative, get_activation
from phasesgd.theory.integrals import (
    FieldActivations,
    covariance,
    has_closed_form_i2,
    i2,
    i3,
    i3_weighted,
    i4,
    j2,
    upsilon,
)

INTEGRALS = {"i2": i2, "j2": j2, "i3": i3, "i4": i4}
CLOSED = ("erf", "relu", "linear")
Z_TOL = 5.0  # standard errors


def random_omega(p: int, k: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A valid Ω with diag in [0.5, 2]·scale and correlations up to ~0.9."""
    gen = torch.Generator().manual_seed(seed)
    n = p + k
    mix = torch.eye(n, dtype=torch.float64) + 0.6 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    w = mix @ torch.randn(n, 40, generator=gen, dtype=torch.float64)
    c = w @ w.T
    sd = c.diagonal().sqrt()
    var = scale * (0.5 + 1.5 * torch.rand(n, generator=gen, dtype=torch.float64))
    return c / (sd[:, None] * sd[None, :]) * (var[:, None] * var[None, :]).sqrt()


def fields_for(student: str | Activation, teacher: str | Activation, p: int, **kw) -> FieldActivations:
    return FieldActivations(get_activation(student), get_activation(teacher), p=p, **kw)


def monte_carlo(
    omega: torch.Tensor, fields: FieldActivations, samples: int, seed: int, chunk: int = 200_000
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Sample means and standard errors of the four integrals' integrands.

    Fields are drawn as λ = z Sᵀ with S the symmetric square root of Ω (eigenvalues
    clamped at 0), which also covers singular Ω.
    """
    evals, evecs = torch.linalg.eigh(omega)
    root = evecs * evals.clamp_min(0).sqrt()
    gen = torch.Generator().manual_seed(seed)
    n, p = omega.shape[-1], fields.p
    sums: dict[str, list[torch.Tensor]] = {}

    def add(name: str, left: torch.Tensor, right: torch.Tensor) -> None:
        s1, s2 = left.T @ right, (left**2).T @ right**2
        if name in sums:
            sums[name][0] += s1
            sums[name][1] += s2
        else:
            sums[name] = [s1, s2]

    done = 0
    while done < samples:
        m = min(chunk, samples - done)
        lam = torch.randn(m, n, generator=gen, dtype=torch.float64) @ root.T
        f = torch.cat([fields.student.fn(lam[:, :p]), fields.teacher.fn(lam[:, p:])], dim=1)
        dp = fields.student.derivative(lam[:, :p])
        add("i2", f, f)
        add("j2", dp, dp)
        add("i3", (dp[:, :, None] * lam[:, None, :]).reshape(m, -1), f)
        add("i4", (dp[:, :, None] * dp[:, None, :]).reshape(m, -1), (f[:, :, None] * f[:, None, :]).reshape(m, -1))
        done += m
    shapes = {"i2": (n, n), "j2": (p, p), "i3": (p, n, n), "i4": (p, p, n, n)}
    out = {}
    for name, (s1, s2) in sums.items():
        mean = s1 / samples
        se = ((s2 / samples - mean**2).clamp_min(0) / samples).sqrt()
        out[name] = (mean.reshape(shapes[name]), se.reshape(shapes[name]))
    return out


def assert_matches_mc(value: torch.Tensor, mc: tuple[torch.Tensor, torch.Tensor], atol: float = 1e-12) -> None:
    mean, se = mc
    excess = (value - mean).abs() - (Z_TOL * se + atol)
    worst = int(excess.argmax())
    v, m, s = (x.flatten()[worst].item() for x in (value, mean, se))
    assert (excess <= 0).all(), f"flat index {worst}: value {v:.6g}, Monte Carlo {m:.6g} ± {s:.2g}"


def rel_to_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------------------------
# Closed forms against Monte Carlo.
# ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mc_closed() -> dict[tuple[str, str], tuple[torch.Tensor, dict]]:
    """One Monte-Carlo reference per (student, teacher) pair of closed-form activations."""
    out = {}
    for seed, (s, t) in enumerate(itertools.product(CLOSED, CLOSED)):
        omega = random_omega(2, 2, seed=seed)
        out[(s, t)] = (omega, monte_carlo(omega, fields_for(s, t, 2), 800_000, seed=100 + seed))
    return out


@pytest.mark.parametrize("student,teacher", list(itertools.product(CLOSED, CLOSED)))
def test_pair_closed_forms_match_monte_carlo(mc_closed, student, teacher):
    # I2, I3 and J2 have closed forms for every pair of erf, relu and linear.
    omega, mc = mc_closed[(student, teacher)]
    fields = fields_for(student, teacher, 2)
    assert has_closed_form_i2(fields.student, fields.teacher)
    for name in ("i2", "j2", "i3"):
        assert_matches_mc(INTEGRALS[name](omega, fields), mc[name])


@pytest.mark.parametrize(
    "student,teacher",
    [("erf", "erf"), ("relu", "relu"), ("linear", "linear"), ("relu", "linear"), ("linear", "erf"), ("linear", "relu")],
)
def test_i4_closed_forms_match_monte_carlo(mc_closed, student, teacher):
    omega, mc = mc_closed[(student, teacher)]
    assert_matches_mc(i4(omega, fields_for(student, teacher, 2)), mc["i4"])


def test_closed_forms_exist_only_for_registered_pairs():
    erf, tanh = get_activation("erf"), get_activation("tanh")
    assert has_closed_form_i2(erf, get_activation("relu"))
    assert not has_closed_form_i2(erf, tanh)
    assert not has_closed_form_i2(tanh, tanh)


def test_linear_closed_forms_are_moments_of_omega():
    # σ(z) = z: I2 = C_ab, I3 = C_bc, I4 = C_cd, J2 = 1 (docs/theory.md §3), exactly.
    omega = random_omega(3, 2, seed=5)
    fields = fields_for("linear", "linear", 3)
    torch.testing.assert_close(i2(omega, fields), omega, rtol=0, atol=1e-15)
    torch.testing.assert_close(i3(omega, fields), omega.expand(3, 5, 5), rtol=0, atol=1e-15)
    torch.testing.assert_close(i4(omega, fields), omega.expand(3, 3, 5, 5), rtol=0, atol=1e-15)
    torch.testing.assert_close(j2(omega, fields), torch.ones(3, 3, dtype=torch.float64))


# ---------------------------------------------------------------------------------
# relu I4: Monte Carlo, independent closed forms of singular cases, generic route.
# ---------------------------------------------------------------------------------


def aligned_omega(seed: int, eps: float) -> torch.Tensor:
    """p = 2, k = 2 with student 1 ≈ 0.9 × student 0 and teacher 0 ≈ 1.1 × student 0."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 30, generator=gen, dtype=torch.float64) / math.sqrt(30)
    w[1] = 0.9 * w[0] + eps * w[1]
    w[2] = 1.1 * w[0] + eps * w[2]
    return w @ w.T


def test_relu_i4_matches_high_sample_monte_carlo_near_singular():
    omega = aligned_omega(seed=3, eps=1e-3)
    fields = fields_for("relu", "relu", 2)
    assert_matches_mc(i4(omega, fields), monte_carlo(omega, fields, 3_000_000, seed=7)["i4"])


def relu_two_field(caa: float, ccc: float, cac: float) -> float:
    """E[1(a>0) relu(c)²], by Stein's lemma on one factor c (derived independently)."""
    rho = cac / math.sqrt(caa * ccc)
    cond_sd = math.sqrt(max(ccc - cac**2 / caa, 0.0))
    delta_term = cac / math.sqrt(2 * math.pi * caa) * cond_sd / math.sqrt(2 * math.pi)  # C_ac E[δ(a) relu(c)]
    return ccc * (0.25 + math.asin(rho) / (2 * math.pi)) + delta_term


def relu_three_field(c: torch.Tensor) -> float:
    """E[1(a>0) relu(c) relu(d)] for (a, c, d) ~ N(0, c): Stein on c, then closed-form
    orthant probabilities (the trivariate one is 1/8 + Σ arcsin ρ/(4π))."""
    c = c.tolist()

    def rho(x, y, cov):
        return cov[x][y] / math.sqrt(cov[x][x] * cov[y][y])

    def cond(cov, k):  # covariance of the other two fields given field k = 0
        rest = [i for i in range(3) if i != k]
        return [[cov[i][j] - cov[i][k] * cov[j][k] / cov[k][k] for j in rest] for i in rest], rest

    def e_y_orthant(cov2, y):  # E[y_y 1(y0>0) 1(y1>0)] for a zero-mean 2-D Gaussian
        return sum(cov2[y][m] / math.sqrt(2 * math.pi * cov2[m][m]) * 0.5 for m in range(2))

    p3 = 0.125 + (math.asin(rho(0, 1, c)) + math.asin(rho(0, 2, c)) + math.asin(rho(1, 2, c))) / (4 * math.pi)
    total = c[1][2] * p3
    for k in (0, 1):  # E[d δ(x_k) Π_{m≠k} 1(x_m>0)] terms; k = 2 (d δ(d)) vanishes
        cov2, rest = cond(c, k)
        total += c[1][k] / math.sqrt(2 * math.pi * c[k][k]) * e_y_orthant(cov2, rest.index(2))
    return total


def test_relu_i4_repeated_indices_match_independent_closed_forms():
    omega = random_omega(2, 3, seed=11)
    fields = fields_for("relu", "relu", 2)
    val = i4(omega, fields)
    for j in range(2):
        # j == l == c == d: E[1(a>0) a²] = C_aa / 2.
        assert val[j, j, j, j].item() == pytest.approx(omega[j, j].item() / 2, rel=1e-7)
        for c in range(5):
            if c != j:
                # j == l, c == d: E[1(a>0) relu(c)²].
                ref = relu_two_field(omega[j, j].item(), omega[c, c].item(), omega[j, c].item())
                assert val[j, j, c, c].item() == pytest.approx(ref, rel=1e-7)
        for c, d in itertools.combinations([x for x in range(5) if x != j], 2):
            # j == l only: a three-field integral.
            ref = relu_three_field(omega[[j, c, d]][:, [j, c, d]])
            assert val[j, j, c, d].item() == pytest.approx(ref, rel=1e-7)


def _random_correlated(n: int, seed: int, aligned: float | None = None) -> torch.Tensor:
    """A random n-field covariance; with ``aligned``, field 1 = 0.9 × field 0 + that much noise."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n + 2, generator=g, dtype=torch.float64)
    if aligned is not None:
        a[1] = 0.9 * a[0] + aligned * a[1]
    return a @ a.T


@pytest.mark.parametrize("seed, aligned", [(0, None), (1, None), (2, 1e-3), (3, 1e-6), (4, 0.0)])
def test_relu_i4_merged_closed_forms_match_the_path_integral(seed, aligned):
    """Every index tuple of five fields: the merged closed forms (u ≤ 3 distinct fields,
    :mod:`phasesgd.theory.integrals.orthant`) against the Price path integral run on the same
    4×4 sub-covariance with its repeated rows, two independent routes; aligned fields
    (nearly or exactly identical, ``aligned = 0``) included."""
    from phasesgd.theory.integrals.relu_i4 import relu_i4, relu_i4_path

    c = _random_correlated(5, seed, aligned)
    idx = torch.tensor(list(itertools.product(range(5), repeat=4)))
    sub = c[idx[:, :, None], idx[:, None, :]]
    scale = (sub[:, 2, 2] * sub[:, 3, 3]).sqrt()
    err = (relu_i4(sub) - relu_i4_path(sub)).abs() / scale
    assert err.max() < 1e-8


def test_relu_path_integral_nodes_by_conditioning_against_many_nodes():
    """The node count chosen from ε (8 to 40 Gauss–Legendre nodes) against one rule of
    160 nodes for all, over random, nearly singular and singular 4×4 covariances."""
    from phasesgd.theory.integrals import relu_i4 as module

    g = torch.Generator().manual_seed(0)
    cs = []
    for s in range(600):
        a = torch.randn(4, 5, generator=g, dtype=torch.float64)
        i, m = torch.randperm(4, generator=g)[:2].tolist()
        if s % 2:
            a[m] = (-1) ** (s // 2) * a[i] + 10 ** (-8 * torch.rand(1, generator=g).item()) * a[m] * (s % 6 != 1)
        cs.append(a @ a.T)
    c = torch.stack(cs)
    chosen = module.relu_i4_path(c)
    rules = module._NODES_BY_EPS
    try:
        module._NODES_BY_EPS = ((0.0, 160),)
        module._node_table.cache_clear()
        many = module.relu_i4_path(c)
    finally:
        module._NODES_BY_EPS = rules
        module._node_table.cache_clear()
    scale = (c[:, 2, 2] * c[:, 3, 3]).sqrt()
    assert ((chosen - many).abs() / scale).max() < 1e-8


def test_orthant_probabilities_and_moments_match_monte_carlo():
    from phasesgd.theory.integrals.orthant import orthant_first_moment, orthant_probability, orthant_second_moment

    c = _random_correlated(3, seed=21) / 3
    x = (
        torch.randn(4_000_000, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        @ torch.linalg.cholesky(c).T
    )
    inside = (x > 0).all(-1).double()
    samples = {
        "P": (orthant_probability(c), inside),
        "M1": (orthant_first_moment(c, 2), x[:, 2] * inside),
        "M2 a≠b": (orthant_second_moment(c, 0, 1), x[:, 0] * x[:, 1] * inside),
        "M2 a=b": (orthant_second_moment(c, 1, 1), x[:, 1] ** 2 * inside),
        "P two": (orthant_probability(c[:2, :2]), (x[:, :2] > 0).all(-1).double()),
    }
    for name, (value, draws) in samples.items():
        se = draws.std() / math.sqrt(draws.numel())
        assert abs(value.item() - draws.mean().item()) < Z_TOL * se, name
    with pytest.raises(ValueError, match="at most 3 fields"):
        orthant_probability(torch.eye(4, dtype=torch.float64))


def test_relu_i4_matches_generic_route_with_many_nodes():
    # Tensor Gauss–Hermite converges only algebraically on relu's kinks (oblique to the
    # grid when fields are correlated), hence the loose tolerance; the tight checks of
    # the relu route are the closed forms and Monte Carlo above.
    omega = random_omega(2, 1, seed=12)
    val = i4(omega, fields_for("relu", "relu", 2))
    generic = i4(omega, fields_for("relu", "relu", 2, quadrature_points_4d=40), route="generic")
    assert rel_to_max(generic, val) < 1e-2


def test_relu_student_linear_teacher_i4_sign_identity():
    # linear(x) = relu(x) − relu(−x): the relu-student/linear-teacher I4 blocks.
    omega = random_omega(2, 2, seed=13)
    assert_matches_mc(
        i4(omega, fields_for("relu", "linear", 2)),
        monte_carlo(omega, fields_for("relu", "linear", 2), 1_000_000, seed=8)["i4"],
    )


# ---------------------------------------------------------------------------------
# Generic quadrature route.
# ---------------------------------------------------------------------------------


def test_generic_route_reproduces_erf_closed_forms():
    fields = fields_for("erf", "erf", 3)
    omega = torch.stack([random_omega(3, 3, seed=20 + s) for s in range(4)])
    for name, fn in INTEGRALS.items():
        closed, generic = fn(omega, fields), fn(omega, fields, route="generic")
        assert rel_to_max(generic, closed) < (1e-4 if name == "i4" else 1e-9), name


def user_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """A smooth user activation known to no registry (derivative by autograd)."""
    return 2 * torch.sigmoid(z) - 1


@pytest.mark.parametrize(
    "student,teacher",
    [
        ("tanh", "tanh"),
        ("torch.nn.functional.silu", "torch.nn.functional.silu"),
        ("erf", "tanh"),
        ("erf", "linear"),  # mixed pair without an I4 closed form
        (Activation("user_sigmoid", user_sigmoid, autograd_derivative(user_sigmoid)), "tanh"),
    ],
)
def test_generic_route_matches_monte_carlo(student, teacher):
    # Enough I4 nodes that the quadrature error is far below the Monte-Carlo error.
    omega = random_omega(2, 2, seed=30)
    fields = fields_for(student, teacher, 2, quadrature_points_4d=24)
    mc = monte_carlo(omega, fields, 1_000_000, seed=31)
    for name, fn in INTEGRALS.items():
        assert_matches_mc(fn(omega, fields), mc[name], atol=1e-6)


@pytest.mark.parametrize("act,tol", [("tanh", 1e-2), ("torch.nn.functional.silu", 2e-2), ("torch.sigmoid", 1e-4)])
def test_generic_i4_default_nodes_against_many_nodes(act, tol):
    # The documented accuracy of the default 13 nodes per dimension (FieldActivations).
    omega = torch.stack([random_omega(2, 2, seed=32 + s) for s in range(3)])
    default = i4(omega, fields_for(act, act, 2))
    many = i4(omega, fields_for(act, act, 2, quadrature_points_4d=30))
    assert rel_to_max(default, many) < tol


# ---------------------------------------------------------------------------------
# Singular covariances, batching, dtype, helpers.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["erf", "relu", "tanh"])
def test_singular_covariance_finite_and_matches_monte_carlo(act):
    # Teacher 0 is exactly student 0 and student 1 is exactly −student 0.
    gen = torch.Generator().manual_seed(40)
    w = torch.randn(5, 30, generator=gen, dtype=torch.float64) / math.sqrt(30)
    w[1] = -w[0]
    w[3] = w[0]
    omega = w @ w.T
    fields = fields_for(act, act, 3, quadrature_points_4d=24)
    mc = monte_carlo(omega, fields, 1_000_000, seed=41)
    for name, fn in INTEGRALS.items():
        value = fn(omega, fields)
        assert torch.isfinite(value).all(), name
        # Allowance: the relu path integral's ~1e-8 where the exact value is 0.
        assert_matches_mc(value, mc[name], atol=1e-8)


@pytest.mark.parametrize("act", ["erf", "relu", "tanh"])
def test_batch_dims_equal_separate_calls(act):
    fields = fields_for(act, "erf", 2)
    omega = torch.stack([random_omega(2, 2, seed=50 + s) for s in range(6)]).reshape(2, 3, 4, 4)
    for fn in INTEGRALS.values():
        batched = fn(omega, fields)
        separate = torch.stack([fn(o, fields) for o in omega.reshape(6, 4, 4)])
        assert batched.shape == (2, 3, *separate.shape[1:])
        torch.testing.assert_close(batched.reshape(separate.shape), separate, rtol=1e-12, atol=1e-14)


def test_float32_input_keeps_dtype_and_accuracy():
    omega = random_omega(2, 2, seed=60)
    for act in ("erf", "relu", "tanh"):
        fields = fields_for(act, act, 2)
        for fn in INTEGRALS.values():
            single, double = fn(omega.float(), fields), fn(omega, fields)
            assert single.dtype == torch.float32
            assert rel_to_max(single.double(), double) < 1e-4


def test_covariance_helper_builds_blocks():
    q, m, p = torch.randn(3, 3), torch.randn(3, 2), torch.randn(2, 2)
    omega = covariance(q, m, p)
    assert torch.equal(omega[:3, :3], q) and torch.equal(omega[:3, 3:], m)
    assert torch.equal(omega[3:, :3], m.T) and torch.equal(omega[3:, 3:], p)


def test_unknown_route_is_rejected():
    with pytest.raises(ValueError, match="route"):
        i2(random_omega(1, 1, seed=0), fields_for("erf", "erf", 1), route="fast")


ROW_CASES = [("erf", "erf"), ("relu", "relu"), ("relu", "linear"), ("erf", "tanh"), ("tanh", "tanh")]


def _monte_carlo_contractions(
    omega: torch.Tensor, fields: FieldActivations, w: torch.Tensor, samples: int, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Sample means and standard errors of σ'(λj) λb e and σ'(λj) σ'(λl) e², e = Σ_c w_c σ_c(λc):
    the integrands of the drift's contracted integrals, drawn directly (no I3 or I4 tensor)."""
    evals, evecs = torch.linalg.eigh(omega)
    lam = torch.randn(samples, omega.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lam = lam @ (evecs * evals.clamp_min(0).sqrt()).T
    p = fields.p
    e = torch.cat([fields.student.fn(lam[:, :p]), fields.teacher.fn(lam[:, p:])], dim=1) @ w
    dp = fields.student.derivative(lam[:, :p])
    draws = {
        "i3_weighted": dp[:, :, None] * lam[:, None, :] * e[:, None, None],
        "upsilon": dp[:, :, None] * dp[:, None, :] * (e**2)[:, None, None],
    }
    return {name: (x.mean(0), x.std(0) / math.sqrt(samples)) for name, x in draws.items()}


@pytest.mark.parametrize("student, teacher", ROW_CASES)
def test_i4_rows_match_monte_carlo(student, teacher):
    """i4(rows=…) computes only the rows asked for (in any order): each equals a Monte-Carlo
    estimate of E[σ'(λj) σ'(λl) σ_c(λc) σ_d(λd)] for those rows j within 5 standard errors."""
    omega = random_omega(4, 3, seed=70)
    fields = fields_for(student, teacher, 4, quadrature_points_4d=24)
    rows = torch.tensor([3, 1])
    value = i4(omega, fields, rows=rows)
    assert value.shape == (2, 4, 7, 7)
    mean, se = monte_carlo(omega, fields, 600_000, seed=71)["i4"]
    assert_matches_mc(value, (mean[rows], se[rows]), atol=1e-8)
    with pytest.raises(ValueError, match="rows"):
        i4(omega, fields, rows=torch.tensor([4]))


@pytest.mark.parametrize("student, teacher", [("erf", "erf"), ("relu", "relu"), ("relu", "linear")])
def test_contracted_integrals_match_monte_carlo(student, teacher):
    """Υ_jl = Σ_cd w_c w_d I4[j,l,c,d] (each unordered pair once) and T_jb = Σ_c w_c I3[j,b,c]
    (from the Stein coefficients) against Monte Carlo of their integrands with e drawn
    directly, on a batch of two covariances with their own weights."""
    omega = torch.stack([random_omega(4, 3, seed=72), random_omega(4, 3, seed=73)])
    w = torch.randn(2, 7, generator=torch.Generator().manual_seed(74), dtype=torch.float64)
    fields = fields_for(student, teacher, 4, quadrature_points_4d=24)
    values = {"i3_weighted": i3_weighted(omega, fields, w), "upsilon": upsilon(omega, fields, w)}
    for b in range(2):
        mc = _monte_carlo_contractions(omega[b], fields, w[b], 600_000, seed=75 + b)
        for name, value in values.items():
            assert_matches_mc(value[b], mc[name], atol=1e-8)
    torch.testing.assert_close(values["upsilon"], values["upsilon"].transpose(-1, -2), rtol=0, atol=0)
    chunked = upsilon(omega, fields, w, max_entries=1)  # one (j, l) pair or tuple at a time
    torch.testing.assert_close(chunked, values["upsilon"], rtol=1e-12, atol=1e-14)
