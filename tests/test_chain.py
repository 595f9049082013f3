"""The exact overlap chain (phasesgd/sgd/chain.py, THEORY.md §6) against plain d-dimensional SGD, in law.

The reference SGD below is written from the formula of THEORY.md §1 with d-dimensional inputs x ~ N(0, I_d) and does
not go through FieldStep; the chain is driven by the students' own field_step (phasesgd/theory/field_step.py).
Chain and SGD use independent seeds; each comparison is a two-sample Kolmogorov–Smirnov test
and a Brown–Forsythe test of equal spread (with the ratio of standard deviations in the message) on Q_11, Q_12, M_11
and the risk at two times. The per-test level 1e-3 is split over the comparisons (Bonferroni): the seeds are fixed,
and a correct chain would fail on fewer than one seed in a thousand. The negative controls show that the same
comparison rejects wrong chains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy import stats

from phasesgd.sgd.chain import OverlapChain, TeacherSpec, standard_normal
from phasesgd.sgd.compiled import CompilePolicy
from phasesgd.sgd.networks import CommitteeStudent, TrainedReadoutStudent

DT = torch.float64
LEVEL = 1e-3  # per test, split over its comparisons
REJECT = 1e-6  # what a negative control must reach


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second thread only waits


# ----------------------------------------------------------------------------------------------------------------
# Reference: plain SGD in d dimensions, straight from the formula
# ----------------------------------------------------------------------------------------------------------------


def sigma(name: str, x: torch.Tensor) -> torch.Tensor:
    return torch.erf(x / math.sqrt(2.0)) if name == "erf" else torch.clamp(x, min=0.0)


def sigma_prime(name: str, x: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2.0 / math.pi) * torch.exp(-0.5 * x**2) if name == "erf" else (x > 0).to(x.dtype)


@dataclass(frozen=True)
class Setup:
    act: str
    d: int
    p: int
    k: int
    batch: int
    lr: float
    steps: int
    noise: float = 0.0
    weight_decay: float = 0.0
    readout_lr: float | None = None  # γ_a0, None: second layer fixed


def orthonormal_teacher(k: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """k rows, orthonormal and scaled by √d (P = I)."""
    q = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=DT)).Q
    return q.T * math.sqrt(d)


def gaussian_rows(replicas: int, rows: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Gaussian rows rescaled to norm √d (the project's student init)."""
    w = torch.randn(replicas, rows, d, generator=gen, dtype=DT)
    return w * (math.sqrt(d) / w.norm(dim=-1, keepdim=True))


def haar_rows(replicas: int, rows: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Orthonormal rows scaled by √d, Haar distributed: QR of a Gaussian matrix with the signs of diag R fixed."""
    q, r = torch.linalg.qr(torch.randn(replicas, d, rows, generator=gen, dtype=DT))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q.transpose(1, 2) * math.sqrt(d)


def sgd_reference(setup: Setup, replicas: int, checkpoints: tuple[int, ...], seed: int) -> dict[int, tuple]:
    """Run SGD from Gaussian students and an orthonormal teacher; (Q, M, P, a) at each checkpoint step."""
    s = setup
    gen = torch.Generator().manual_seed(seed)
    W_star = orthonormal_teacher(s.k, s.d, gen)
    W = gaussian_rows(replicas, s.p, s.d, gen)
    a = torch.ones(replicas, s.p, dtype=DT)
    root_d = math.sqrt(s.d)
    out = {}
    for step in range(1, s.steps + 1):
        x = torch.randn(replicas, s.batch, s.d, generator=gen, dtype=DT)
        xi = torch.randn(replicas, s.batch, generator=gen, dtype=DT)
        lam = torch.einsum("rbi,rji->rbj", x, W) / root_d
        lam_star = torch.einsum("rbi,ji->rbj", x, W_star) / root_d
        y = sigma(s.act, lam_star).mean(-1) + math.sqrt(s.noise) * xi
        e = y - (a[:, None, :] * sigma(s.act, lam)).sum(-1) / s.p  # (R, B)
        coeff = a[:, None, :] * e[..., None] * sigma_prime(s.act, lam)  # (R, B, p)
        if s.readout_lr is not None:
            a = a + s.readout_lr / (s.d * s.p * s.batch) * (e[..., None] * sigma(s.act, lam)).sum(1)
        W = (1 - s.lr * s.weight_decay / (s.p * s.d)) * W
        W = W + s.lr / (s.p * s.batch) * torch.einsum("rbj,rbi->rji", coeff, x) / root_d
        if step in checkpoints:
            Q = W @ W.transpose(1, 2) / s.d
            M = W @ W_star.T / s.d
            out[step] = (Q, M, W_star @ W_star.T / s.d, a.clone())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Risk (THEORY.md §2, §3) and statistics
# ----------------------------------------------------------------------------------------------------------------


def i2(act: str, c_ab, c_aa, c_bb):
    if act == "erf":
        return (2 / np.pi) * np.arcsin(c_ab / np.sqrt((1 + c_aa) * (1 + c_bb)))
    norm = np.sqrt(c_aa * c_bb)
    theta = np.arccos(np.clip(c_ab / norm, -1.0, 1.0))
    return norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)


def risk(act: str, Q, M, P, a) -> np.ndarray:
    """R = ½ [(1/k²) Σ a*a* I2(r*, s*) + (1/p²) Σ a a I2(j, l) − (2/(pk)) Σ a a* I2(j, r*)], a* = 1, per replica."""
    Q, M, P, a = (np.asarray(t, dtype=np.float64) for t in (Q, M, P, a))
    p, k = M.shape[-2:]
    q = np.diagonal(Q, axis1=-2, axis2=-1)
    r = np.diagonal(P)
    tt = i2(act, P, r[:, None], r[None, :]).sum() / k**2
    ss = np.einsum("rj,rjl,rl->r", a, i2(act, Q, q[:, :, None], q[:, None, :]), a) / p**2
    st = np.einsum("rj,rjs->r", a, i2(act, M, q[:, :, None], r[None, None, :])) * 2 / (p * k)
    return 0.5 * (tt + ss - st)


def statistics(act: str, Q, M, P, a) -> dict[str, np.ndarray]:
    return {
        "Q11": Q[:, 0, 0].numpy(),
        "Q12": Q[:, 0, 1].numpy(),
        "M11": M[:, 0, 0].numpy(),
        "risk": risk(act, Q, M, P, a),
    }


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, tuple[float, float, float]]:
    """name → (KS p-value, Brown–Forsythe p-value, std ratio)."""
    out = {}
    for name in a:
        ks = stats.ks_2samp(a[name], b[name]).pvalue
        bf = stats.levene(a[name], b[name], center="median").pvalue
        out[name] = (float(ks), float(bf), float(np.std(a[name]) / np.std(b[name])))
    return out


def chain_overlaps(chain: OverlapChain, d: int):
    """(Q, M, P) = blocks of F Fᵀ/d for a given d (the wrong-d control steps with another)."""
    F = chain.coordinates
    omega = F @ F.transpose(1, 2) / d
    p = chain.p
    return omega[:, :p, :p], omega[:, :p, p:], omega[0, p:, p:]


def student_rule(chain: OverlapChain, act: str = "erf", weight_decay: float = 0.0, readout_lr: float | None = None):
    """The field_step of a committee student (a trained-readout one with ``readout_lr``) of the chain's sizes and
    d, float64 and without d-dimensional weights, whose second layer is the chain's."""
    sizes = dict(width=chain.p, dim=chain.d, activation=act, replicas=chain.replicas, weight_decay=weight_decay)
    sizes |= dict(draw_weights=False, dtype="float64")
    student = (
        CommitteeStudent(**sizes) if readout_lr is None else TrainedReadoutStudent(**sizes, second_layer_lr=readout_lr)
    )
    chain.share_second_layer(student.second_layer.data)
    return student.field_step


def run_chain(chain: OverlapChain, setup: Setup, checkpoints: tuple[int, ...], d_true: int) -> dict[int, tuple]:
    s = setup
    rule = student_rule(chain, s.act, s.weight_decay, s.readout_lr)
    out, done = {}, 0
    for c in checkpoints:
        chain.run(c - done, rule, s.lr, s.noise, s.batch)
        done = c
        out[c] = (*chain_overlaps(chain, d_true), chain.second_layer.clone())
    return out


def make_chain(setup: Setup, replicas: int, seed: int, cls=OverlapChain) -> OverlapChain:
    teacher = TeacherSpec(activation=setup.act)
    return cls.from_law(setup.p, setup.k, setup.d, replicas, torch.Generator().manual_seed(seed), teacher=teacher)


def law_pvalues(setup: Setup, chain: OverlapChain, sgd: dict[int, tuple]) -> dict[str, tuple[float, float, float]]:
    checkpoints = tuple(sorted(sgd))
    ours = run_chain(chain, setup, checkpoints, setup.d)
    result = {}
    for c in checkpoints:
        for name, value in compare(statistics(setup.act, *ours[c]), statistics(setup.act, *sgd[c])).items():
            result[f"{name}@{c}"] = value
    return result


def min_p(result: dict[str, tuple[float, float, float]]) -> float:
    return min(min(ks, bf) for ks, bf, _ in result.values())


def assert_same_law(result: dict[str, tuple[float, float, float]]) -> None:
    alpha = LEVEL / (2 * len(result))
    bad = {name: v for name, v in result.items() if min(v[0], v[1]) < alpha}
    assert not bad, f"chain and SGD differ (level {alpha:.1e}): {bad}"


SGD_CACHE: dict[tuple, dict] = {}


def sgd_cached(setup: Setup, replicas: int, checkpoints: tuple[int, ...], seed: int) -> dict[int, tuple]:
    key = (setup, replicas, checkpoints, seed)
    if key not in SGD_CACHE:
        SGD_CACHE[key] = sgd_reference(setup, replicas, checkpoints, seed)
    return SGD_CACHE[key]


# ----------------------------------------------------------------------------------------------------------------
# Chain against SGD, in law
# ----------------------------------------------------------------------------------------------------------------

ERF_SMALL = Setup("erf", d=30, p=2, k=1, batch=1, lr=2.0, steps=240, noise=0.01)
CASES = {
    "erf-d30-p2k1-B1": (ERF_SMALL, 2000),
    "relu-d200-p2k1-B1-decay": (Setup("relu", 200, 2, 1, 1, lr=1.0, steps=400, noise=0.01, weight_decay=1.0), 1000),
    "erf-d30-p8k4-B4-readout": (Setup("erf", 30, 8, 4, 4, lr=8.0, steps=150, noise=0.001, readout_lr=2.0), 1500),
    "relu-d30-p8k4-B1-decay-readout": (
        Setup("relu", 30, 8, 4, 1, lr=4.0, steps=150, weight_decay=0.5, readout_lr=1.0),
        1500,
    ),
}
SLOW_CASES = {
    "erf-d200-p8k4-B4-decay-readout": (
        Setup("erf", 200, 8, 4, 4, lr=8.0, steps=300, noise=0.001, weight_decay=0.5, readout_lr=1.0),
        1000,
    ),
}


def checkpoints_of(setup: Setup) -> tuple[int, ...]:
    return (setup.steps // 2, setup.steps)


RIGHT_CACHE: dict[tuple, dict] = {}


def right_chain_pvalues(setup: Setup, replicas: int) -> dict[str, tuple[float, float, float]]:
    """The comparison of the correct chain (2000 replicas, seed 2) with SGD (seed 1), computed once per setup."""
    key = (setup, replicas)
    if key not in RIGHT_CACHE:
        sgd = sgd_cached(setup, replicas, checkpoints_of(setup), seed=1)
        RIGHT_CACHE[key] = law_pvalues(setup, make_chain(setup, 2000, seed=2), sgd)
    return RIGHT_CACHE[key]


@pytest.mark.parametrize(
    "name",
    [*CASES, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW_CASES)],
)
def test_chain_has_the_law_of_sgd(name):
    setup, replicas = {**CASES, **SLOW_CASES}[name]
    result = right_chain_pvalues(setup, replicas)
    print(name, {k: tuple(round(x, 4) for x in v) for k, v in result.items()})
    assert_same_law(result)


class NoOrthogonalPart(OverlapChain):
    """Wrong on purpose: drops the χ² part of the input orthogonal to the coordinates (T = 0 at B = 1)."""

    def _orthogonal_lengths(self, widths, batch):
        return torch.zeros_like(super()._orthogonal_lengths(widths, batch))


@pytest.mark.parametrize("wrong", ["no-orthogonal-part", "d-off-by-25%"])
def test_the_law_comparison_rejects_a_wrong_step(wrong):
    setup, replicas = CASES["erf-d30-p2k1-B1"]
    sgd = sgd_cached(setup, replicas, checkpoints_of(setup), seed=1)
    right = right_chain_pvalues(setup, replicas)
    if wrong == "no-orthogonal-part":
        chain = make_chain(setup, 2000, seed=2, cls=NoOrthogonalPart)
    else:
        chain = make_chain(setup, 2000, seed=2)
        chain.d = round(1.25 * setup.d)  # coordinates drawn at d; the steps use 1.25 d
    result = law_pvalues(setup, chain, sgd)
    print(wrong, "min p wrong", min_p(result), "right", min_p(right))
    assert_same_law(right)
    assert min_p(result) < REJECT, f"the wrong chain ({wrong}) was not rejected: {result}"


# ----------------------------------------------------------------------------------------------------------------
# Initial overlaps
# ----------------------------------------------------------------------------------------------------------------


def init_entries(Q, M, P) -> dict[str, np.ndarray]:
    out = {"Q12": Q[:, 0, 1], "Q23": Q[:, 1, 2], "M11": M[:, 0, 0], "M32": M[:, 2, 1], "|M1|": M[:, 0].norm(dim=-1)}
    if P.ndim == 3:
        out["P12"] = P[:, 0, 1]
    return {k: v.numpy() for k, v in out.items()}


INITS = [("gaussian", "orthonormal"), ("orthonormal", "orthonormal"), ("gaussian", "gaussian")]


@pytest.mark.parametrize("student_init, teacher_init", INITS)
def test_from_law_has_the_law_of_a_d_dimensional_draw(student_init, teacher_init):
    p, k, d = 3, 2, 10
    replicas = 20000 if teacher_init == "orthonormal" else 2500
    gen = torch.Generator().manual_seed(3)
    if teacher_init == "orthonormal":
        W_star = orthonormal_teacher(k, d, gen).expand(replicas, k, d)
    else:  # one teacher per replica here, so that P's law is compared too
        W_star = gaussian_rows(replicas, k, d, gen)
    W = gaussian_rows(replicas, p, d, gen) if student_init == "gaussian" else haar_rows(replicas, p, d, gen)
    ref = (W @ W.transpose(1, 2) / d, W @ W_star.transpose(1, 2) / d, W_star @ W_star.transpose(1, 2) / d)
    if teacher_init == "orthonormal":
        chain = OverlapChain.from_law(p, k, d, replicas, torch.Generator().manual_seed(4), student_init)
        ours = chain.overlaps()
        assert torch.allclose(ours[2], torch.eye(k, dtype=DT), atol=1e-14)
    else:  # from_law draws one teacher for all replicas: draw many chains of one replica each
        gen = torch.Generator().manual_seed(4)
        spec = TeacherSpec(init="gaussian")
        parts = [OverlapChain.from_law(p, k, d, 1, gen, student_init, spec).overlaps() for _ in range(replicas)]
        ours = (
            torch.cat([q for q, _, _ in parts]),
            torch.cat([m for _, m, _ in parts]),
            torch.stack([pp for *_, pp in parts]),
        )
    if student_init == "orthonormal":
        assert torch.allclose(ours[0], torch.eye(p, dtype=DT).expand(replicas, p, p), atol=1e-13)
    else:
        assert torch.allclose(torch.diagonal(ours[0], dim1=-2, dim2=-1), torch.ones(replicas, p, dtype=DT), atol=1e-13)
    a, b = init_entries(*ours), init_entries(*ref)
    if student_init == "orthonormal":
        a.pop("Q12"), a.pop("Q23"), b.pop("Q12"), b.pop("Q23")
    pvalues = {name: stats.ks_2samp(a[name], b[name]).pvalue for name in a}
    print(student_init, teacher_init, pvalues)
    assert min(pvalues.values()) > LEVEL / len(pvalues), pvalues


def test_the_normal_sampler_is_standard_normal():
    """standard_normal's Box–Muller on 53-bit integers (the CPU path for many numbers) against N(0, 1): KS, and the
    two halves of a draw (cos and sin) uncorrelated."""
    x = standard_normal((2, 100_001), torch.Generator().manual_seed(15))
    assert x.dtype == DT and x.shape == (2, 100_001)
    assert stats.kstest(x.numpy().ravel(), "norm").pvalue > LEVEL
    assert abs(float(torch.corrcoef(x)[0, 1])) < 0.02


def test_from_weights_reproduces_the_weights_overlaps():
    gen = torch.Generator().manual_seed(5)
    d, p, k, replicas = 50, 3, 2, 4
    W_star = gaussian_rows(1, k, d, gen)[0]
    W = gaussian_rows(replicas, p, d, gen)
    chain = OverlapChain.from_weights(W, W_star, d, torch.Generator().manual_seed(6))
    Q, M, P = chain.overlaps()
    assert torch.allclose(Q, W @ W.transpose(1, 2) / d, atol=1e-13)
    assert torch.allclose(M, W @ W_star.T / d, atol=1e-13)
    assert torch.allclose(P, W_star @ W_star.T / d, atol=1e-13)
    F = chain.coordinates
    assert F.shape == (replicas, p + k, p + k)
    omega = torch.cat([torch.cat([Q, M], 2), torch.cat([M.transpose(1, 2), P.expand(replicas, k, k)], 2)], 1)
    assert torch.allclose(F @ F.transpose(1, 2) / d, omega, atol=1e-13)


# ----------------------------------------------------------------------------------------------------------------
# The rule in weight space
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["erf", "relu"])
def test_the_students_one_step_is_the_committee_formula(act):
    """The definition the chain consumes (field_step), applied in weight space, is THEORY.md §1's step."""
    gen = torch.Generator().manual_seed(7)
    R, B, p, d, lr, wd, lr_a = 3, 4, 5, 40, 1.7, 0.3, 0.9
    W = torch.randn(R, p, d, generator=gen, dtype=DT)
    x = torch.randn(R, B, d, generator=gen, dtype=DT)
    y = torch.randn(R, B, generator=gen, dtype=DT)
    a = torch.randn(R, p, generator=gen, dtype=DT)
    student = TrainedReadoutStudent(
        width=p, dim=d, activation=act, replicas=R, weight_decay=wd, dtype="float64", second_layer_lr=lr_a
    )
    student.weight.data.copy_(W)
    student.second_layer.data.copy_(a)
    student.sgd_step(x, y, lr)
    # the formula, one sample and one unit at a time
    W_ref, a_ref = W.clone() * (1 - lr * wd / (p * d)), a.clone()
    for r in range(R):
        for b in range(B):
            lam = W[r] @ x[r, b] / math.sqrt(d)
            e = y[r, b] - (a[r] * sigma(act, lam)).sum() / p
            for j in range(p):
                W_ref[r, j] += lr / (p * B) * a[r, j] * e * sigma_prime(act, lam[j]) * x[r, b] / math.sqrt(d)
                a_ref[r, j] += lr_a / (d * p * B) * e * sigma(act, lam[j])
    assert (student.weight - W_ref).abs().max() < 1e-12
    assert (student.second_layer - a_ref).abs().max() < 1e-12


# ----------------------------------------------------------------------------------------------------------------
# State, compression, limits
# ----------------------------------------------------------------------------------------------------------------


def test_compression_keeps_the_overlaps():
    chain = OverlapChain.from_law(3, 2, 100, 5, torch.Generator().manual_seed(8))
    rule = student_rule(chain)
    chain.run(chain.max_width - chain.width, rule, 1.0, 0.1, 1)
    assert chain.width == chain.max_width
    before = [t.clone() for t in chain.overlaps()]
    chain.compress()
    assert chain.width == chain.k + chain.p
    for old, new in zip(before, chain.overlaps()):
        assert torch.allclose(old, new, rtol=0, atol=1e-14)


@pytest.mark.parametrize("batch", [1, 3])
def test_resume_is_bit_identical(batch):
    setup = Setup("erf", 60, 3, 2, batch, lr=3.0, steps=0, noise=0.01, weight_decay=0.2, readout_lr=1.0)
    rule = lambda chain: student_rule(chain, setup.act, setup.weight_decay, setup.readout_lr)  # noqa: E731
    lrs = torch.linspace(3.0, 1.0, 200, dtype=DT)
    whole = make_chain(setup, 6, seed=9)
    whole.run(200, rule(whole), lrs, setup.noise, batch)
    first = make_chain(setup, 6, seed=9)
    first.run(77, rule(first), lrs[:77], setup.noise, batch)  # mid-cycle: m is neither k + p nor max_width
    state = first.state_dict()
    fresh = make_chain(setup, 6, seed=123)
    fresh_rule = rule(fresh)
    fresh.load_state_dict(state)
    fresh.run(123, fresh_rule, lrs[77:], setup.noise, batch)
    assert torch.equal(fresh.coordinates, whole.coordinates)
    assert torch.equal(fresh.second_layer, whole.second_layer)
    assert fresh.steps == whole.steps == 200


def test_compiled_cycles_are_the_eager_steps():
    """Whole blocks compiled (CompilePolicy.chain_cycles, short cycles so that it compiles fast), weight decay and
    label noise, against the eager steps: the same numbers up to the rounding of fused loops; a block cut by the
    run's end goes step by step. The policy refuses what it cannot compile."""
    policy = CompilePolicy(enabled=True)
    chains = [OverlapChain.from_law(2, 1, 50, 2, torch.Generator().manual_seed(14), max_width=6) for _ in range(2)]
    students = []
    for chain in chains:
        students.append(CommitteeStudent(2, 50, replicas=2, weight_decay=0.3, dtype="float64", draw_weights=False))
        chain.share_second_layer(students[-1].second_layer.data)
    cycle = chains[0].max_width - 3
    cycles = policy.chain_cycles(students[0], 2, 1, 0, cycle)
    assert cycles is not None
    lrs = torch.linspace(3.0, 1.0, 4 * cycle + 2, dtype=DT)
    chains[0].run(len(lrs), students[0].field_step, lrs, 0.01, 1, cycles)
    chains[1].run(len(lrs), students[1].field_step, lrs, 0.01, 1)
    assert chains[0].steps == chains[1].steps == len(lrs) and cycles._compiled and not cycles.failed
    torch.testing.assert_close(chains[0].coordinates, chains[1].coordinates, rtol=0, atol=1e-12)
    assert not torch.equal(
        chains[1].coordinates, OverlapChain.from_law(2, 1, 50, 2, torch.Generator().manual_seed(14)).coordinates
    )
    readout = TrainedReadoutStudent(2, 50, replicas=2, dtype="float64", draw_weights=False)
    assert policy.chain_cycles(readout, 2, 1, 0, cycle) is None  # its readout step is not compiled
    assert policy.chain_cycles(students[0], 2, 2, 0, cycle) is None  # B = 2
    assert policy.chain_cycles(students[0], 100, 1, 0, cycle) is None  # R·p above chain_below_rows
    assert CompilePolicy().chain_cycles(students[0], 2, 1, 10, cycle) is None  # automatic: not before after_steps


def test_learning_rates_per_replica():
    chain = OverlapChain.from_law(3, 2, 100, 2, torch.Generator().manual_seed(12))
    rule = student_rule(chain, weight_decay=0.5)
    before = [t.clone() for t in chain.overlaps()]
    lrs = torch.tensor([[0.0, 2.0]], dtype=DT).expand(60, 2)  # replica 0 does not move, replica 1 does
    chain.run(60, rule, lrs, 0.01, 2)
    after = chain.overlaps()
    assert torch.allclose(after[0][0], before[0][0], rtol=0, atol=1e-13)
    assert torch.allclose(after[1][0], before[1][0], rtol=0, atol=1e-13)
    assert (after[0][1] - before[0][1]).abs().max() > 1e-3


def test_too_small_d_is_refused():
    chain = OverlapChain.from_law(2, 1, 5, 2, torch.Generator().manual_seed(10))
    rule = student_rule(chain)
    with pytest.raises(ValueError, match=r"m \+ B <= d") as info:
        chain.step(rule, 1.0, 0.0, batch=3)
    assert "\n" not in str(info.value)
    chain.run(20, rule, 1.0, 0.0, batch=2)  # m = 3 after each compression: 3 + 2 <= 5 fits
    with pytest.raises(ValueError, match="p \\+ k <= d"):
        OverlapChain.from_law(4, 2, 5, 1, torch.Generator())


def psd_run(d: int, steps: int, replicas: int = 4) -> tuple[OverlapChain, float]:
    chain = OverlapChain.from_law(2, 1, d, replicas, torch.Generator().manual_seed(11))
    rule = student_rule(chain)
    worst = math.inf
    chunk = min(steps, 10_000)
    for _ in range(steps // chunk):
        chain.run(chunk, rule, 2.0, 0.01, 1)
        F = chain.coordinates
        omega = F @ F.transpose(1, 2) / d
        eig = torch.linalg.eigvalsh(omega)
        worst = min(worst, float((eig[:, 0] / eig[:, -1]).min()))
        assert chain.student_coordinates.shape[2] <= chain.max_width
    return chain, worst


def test_psd_and_no_d_sized_memory_at_d_1e9():
    chain, worst = psd_run(10**9, 3000)
    assert worst >= -1e-12
    R, p, k = chain.replicas, chain.p, chain.k
    assert chain.coordinates.shape[:2] == (R, p + k) and chain.coordinates.shape[2] <= chain.max_width
    assert chain.max_width <= 2 * (p + k) + 16
    for value in chain.state_dict().values():
        if isinstance(value, torch.Tensor):
            assert value.numel() < 10**4, "nothing of size d"
    Q, M, P = chain.overlaps()
    # 3000 steps at γ = 2 move the overlaps by about 3000 γ/(p d) ≈ 3e-6: Q_jj stays 1 to that order
    assert torch.allclose(torch.diagonal(Q, dim1=-2, dim2=-1), torch.ones(R, p, dtype=DT), atol=1e-4)


def test_psd_when_omega_is_singular():
    """Two students equal to the teacher get equal gains at every step, so Ω stays singular (rank 1, up to the
    rounding of compressions): the hardest case for positive semi-definiteness."""
    d, R = 10**6, 4
    root_d = math.sqrt(d)
    student = torch.zeros(R, 2, 2, dtype=DT)
    student[:, :, 0] = root_d
    chain = OverlapChain(student, torch.full((1, 1), root_d, dtype=DT), d, torch.Generator().manual_seed(13))
    rule = student_rule(chain)
    for _ in range(10):
        chain.run(500, rule, 4.0, 0.5, 1)
        F = chain.coordinates
        eig = torch.linalg.eigvalsh(F @ F.transpose(1, 2) / d)
        assert float((eig[:, 0] / eig[:, -1]).min()) >= -1e-12
    Q, M, _ = chain.overlaps()
    assert (Q[:, 0, 0] - 1).abs().max() > 1e-4, "the noise moved the students"
    assert torch.allclose(Q[:, 0, 0], Q[:, 0, 1], rtol=0, atol=1e-10)


@pytest.mark.slow
def test_psd_over_a_million_steps_at_d_1e6():
    chain, worst = psd_run(10**6, 10**6)
    print(f"worst λ_min/λ_max over 10^6 steps at d = 10^6: {worst:.3e}")
    assert worst >= -1e-12
    assert chain.steps == 10**6
