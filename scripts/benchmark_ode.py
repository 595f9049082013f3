"""Benchmark of the ODE engine (phasesgd.ode): every figure a ratio measured in this run.

Setting: k = 4 teachers, erf, Δ = 1e-3, γ0 = 8, asymptotic mode, the "blue line"
(docs/theory.md §5), from Gaussian students at d = 1000 (Q_jj = 1, M ~ 1/√d), P = I.

(1) Blue line to t = 1000 at p = 8: the default solve (``method='auto'``) against
    - the previous engine, run here: dopri5 at rtol 1e-6 on the dense-tensor drift
      (whole I3 and I4 tensors contracted by einsum, as before the contraction rewrite);
    - forward Euler with one step per SGD step at d = 1000 (dt = 1e-3, 10⁶ steps),
      extrapolated from 2000 timed steps of the current drift.
    Accuracy: max_t |R − R_ref| relative to max R_ref, and max_t |R/R_ref − 1|, against
    dopri8 at rtol 1e-11.
(2) relu (student and teacher) at p = 8, same line; wider blue lines (``--wide``: p = 32, 64)
    and the green asymptotic line (δ = 1/2, perfect region: no I4 term) at p = 256 to t = 100,
    each against its target wall time (the project's goals, not measurements).
(3) Drift evaluations per second at p = 8, 32, 64, 128, current against the dense-tensor
    baseline (``--device cuda`` times CUDA instead; :func:`drift_rate` is importable).

    python scripts/benchmark_ode.py [--device cpu|cuda] [--threads N] [--wide] [--widths 8 32 64 128]
    python scripts/benchmark_ode.py --markdown [--output docs/benchmarks.md]   # rewrites its section there
    python scripts/benchmark_ode.py --quick                                    # tiny sizes (tests)

Timings on a shared machine are inflated by its load; the ratios within one run are not,
since both sides of each ratio are timed one after the other in this process.

docs/benchmarks.md is written by :mod:`phasesgd.infra.report`, shared by the three scripts.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from phasesgd.infra.report import DOC, RunInfo, load_average, markdown_table, section, text_table, write_section
from phasesgd.ode import ODEBudgetExceeded, SolverOptions
from phasesgd.ode.drift import MAX_I4_ENTRIES, Integrals, OrderParameterDrift, asymptotic_prefactors, prefactors
from phasesgd.ode.problem import Problem, prepare
from phasesgd.ode.solve import solve_problem
from phasesgd.theory.activations import get_activation
from phasesgd.theory.integrals import FieldActivations, i3, i4
from phasesgd.theory.order_parameters import Overlaps, order_parameters
from phasesgd.theory.physics import RunPhysics
from phasesgd.theory.scaling import Scaling

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
BLUE = dict(gamma0=8.0, noise=1e-3)
T_END = 1000.0
EULER_DT = 1e-3  # one Euler step per SGD step at d = 1000
# Target wall times of one default solve (the project's goals; "blue p=8" is 300x under the
# published Cython Euler code's time for the same line).
TARGETS_S = {"blue p=8": 0.6, "blue p=32": 20.0, "blue p=64": 300.0, "relu p=8": 2.0, "green p=256": 300.0}


# ----- docs/benchmarks.md: one section per script -----------------------------------------


def blue_line_init(p: int, k: int = 4, d: int = 1000, seed: int = 0, device: str = "cpu") -> Overlaps:
    """Gaussian student rows (Q_jj = 1, M ~ 1/√d), orthonormal teacher (P = I)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(p, d, generator=g, dtype=F64)
    W = W * (math.sqrt(d) / W.norm(dim=1, keepdim=True))
    W_star = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64)).Q.T * math.sqrt(d)
    overlaps = order_parameters(W, W_star)
    return Overlaps(overlaps.Q.to(device), overlaps.M.to(device), torch.eye(k, dtype=F64, device=device))


def timed(fn: Callable):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ----- the dense-tensor baseline (the previous drift's formulas) ----------------------------


def dense_weighted_i3(omega: Tensor, fields: FieldActivations, w: Tensor) -> Tensor:
    """Σ_c w_c I3[j, b, c] from the whole I3 tensor (p n² numbers)."""
    return torch.einsum("...jbc,...c->...jb", i3(omega, fields), w)


def dense_upsilon(omega: Tensor, fields: FieldActivations, w: Tensor, max_entries: int = MAX_I4_ENTRIES) -> Tensor:
    """Σ_cd w_c w_d I4[j, l, c, d] from whole row blocks of I4 (p² n² numbers in all)."""
    p, n = fields.p, omega.shape[-1]
    block = max(1, max_entries // max(1, math.prod(omega.shape[:-2]) * p * n * n))
    rows = [torch.arange(j0, min(j0 + block, p), device=omega.device) for j0 in range(0, p, block)]
    return torch.cat([torch.einsum("...jlcd,...c,...d->...jl", i4(omega, fields, rows=r), w, w) for r in rows], dim=-2)


DENSE = Integrals(weighted_i3=dense_weighted_i3, upsilon=dense_upsilon)


def with_integrals(problem: Problem, physics: RunPhysics, integrals: Integrals) -> Problem:
    """``problem`` with its drift rebuilt on ``integrals``. prepare() builds the drift with
    the default integrals; this rebuilds it from the physics of this benchmark (fixed unit
    second layers, no weight decay, no schedule, B = 1), which is all it needs."""
    coefficients = prefactors(problem.mode, problem.scaling, physics.gamma0, problem.fields.p, physics.d)
    drift = OrderParameterDrift(problem.P, problem.fields, coefficients, noise=physics.noise, integrals=integrals)
    return replace(problem, drift=drift)


def solve_blue(
    p: int, dense: bool = False, activation: str = "erf", t_end: float = T_END, delta: float = 0.0, **options
):
    """(solution, seconds) of the blue line (or, with δ = 1/2, the green one) from t = 0 to t_end."""
    physics = RunPhysics(**BLUE, delta=delta, student_activation=activation, teacher_activation=activation)
    problem = prepare(blue_line_init(p), physics, np.linspace(0.0, t_end, 101), mode="asymptotic")
    if dense:
        problem = with_integrals(problem, physics, DENSE)
    return timed(lambda: solve_problem(problem, SolverOptions(**options)))


def euler_seconds_per_step(p: int, steps: int = 2000) -> float:
    """Wall time of one forward-Euler step y ← y + dt f(y) of the current drift."""
    init = blue_line_init(p)
    fields = FieldActivations(get_activation("erf"), get_activation("erf"), p)
    drift = OrderParameterDrift(
        init.P, fields, asymptotic_prefactors(Scaling(), BLUE["gamma0"], p), noise=BLUE["noise"]
    )
    y = drift.pack(init.Q, init.M)
    start = time.perf_counter()
    for n in range(steps):
        y = y + EULER_DT * drift(torch.tensor(n * EULER_DT, dtype=F64), y)
    return (time.perf_counter() - start) / steps


def errors(risk: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max |R − R_ref| / max R_ref, max |R/R_ref − 1|)."""
    return float(np.abs(risk - reference).max() / reference.max()), float(np.abs(risk / reference - 1).max())


# ----- the three parts --------------------------------------------------------------------------


@dataclass
class Part:
    """One part of the benchmark: a title, a table and notes under it."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str]
    align: str = ""  # 'l'/'r' per column (default: first left, rest right)

    def text(self) -> str:
        return "\n".join([self.title, text_table(self.headers, self.rows), *(f"    {n}" for n in self.notes)])

    def markdown(self) -> str:
        notes = "".join(f"\n- {n}" for n in self.notes)
        return f"### {self.title}\n\n{markdown_table(self.headers, self.rows, self.align)}\n{notes}\n"


def blue_line_benchmark(t_end: float = T_END, euler_steps: int = 2000) -> Part:
    """(1): the default solve against the previous engine and Euler, both timed here."""
    reference, _ = solve_blue(8, t_end=t_end, method="dopri8", rtol=1e-11, atol=1e-13)
    runs = []
    for name, kwargs in (("default (auto)", {}), ("previous: dense drift, dopri5", dict(dense=True, method="dopri5"))):
        sol, wall = solve_blue(8, t_end=t_end, **kwargs)
        runs.append((name, sol.method, wall, str(sol.evaluations), *errors(sol.risk, reference.risk)))
    new = runs[0][2]
    euler = euler_seconds_per_step(8, euler_steps) * t_end / EULER_DT
    rows = [
        [name, method, f"{wall:.3g}", evals, f"{e1:.1e}", f"{e2:.1e}", f"{wall / new:.3g}"]
        for name, method, wall, evals, e1, e2 in runs
    ]
    rows.append(
        [
            f"forward Euler dt={EULER_DT:g}, extrapolated",
            "euler",
            f"{euler:.3g}",
            f"{t_end / EULER_DT:.0f}",
            "",
            "",
            f"{euler / new:.3g}",
        ]
    )
    notes = [
        f"errors against dopri8 at rtol 1e-11 (R_ref(t={t_end:g}) = {reference.risk[-1]:.4e}), on 101 output times",
        f"Euler: {euler_steps} timed steps of the current drift, times {t_end / EULER_DT:.0f} steps",
    ]
    if t_end == T_END:
        target = TARGETS_S["blue p=8"]
        notes.append(f"target of the default solve: {target:g} s; wall / target = {new / target:.2f}")
    return Part(
        f"(1) blue line to t={t_end:g}, p=8, k=4, erf, Δ=1e-3, γ0=8, asymptotic",
        ["engine", "method", "wall [s]", "drift evals", "err / max R", "max rel err", "wall / default"],
        rows,
        notes,
        align="llrrrrr",
    )


def line(name: str, p: int, limit_s: float, **kwargs) -> list[str]:
    """One default solve (a table row), stopped past ``limit_s``, against its target."""
    target = TARGETS_S.get(name, math.nan)
    try:
        sol, wall = solve_blue(p, max_seconds=limit_s, **kwargs)
    except ODEBudgetExceeded:
        return [name, "-", f"> {limit_s:g}", "-", f"{target:g}", f"> {limit_s / target:.2f}"]
    return [name, sol.method, f"{wall:.3g}", str(sol.evaluations), f"{target:g}", f"{wall / target:.2f}"]


def other_lines(limit_s: float, threads: int, wide: bool) -> Part:
    """(2): relu at p = 8, the green line at p = 256 (and with ``wide`` blue at p = 32, 64)."""
    rows = [
        line("relu p=8", 8, limit_s, activation="relu", threads=threads),
        line("green p=256", 256, limit_s, delta=0.5, t_end=100.0, threads=threads),
    ]
    for p in (32, 64) if wide else ():
        rows.append(line(f"blue p={p}", p, 2 * limit_s, threads=threads))
    return Part(
        f"(2) other lines, default solve, {threads} thread(s): relu and blue to t={T_END:g}, green (δ=1/2) to t=100",
        ["line", "method", "wall [s]", "drift evals", "target [s]", "wall / target"],
        rows,
        [f"each solve stopped past {limit_s:g} s ({2 * limit_s:g} s for the wide blue lines)"],
        align="llrrrr",
    )


def drift_rate(
    p: int, k: int = 4, device: str = "cpu", activation: str = "erf", dense: bool = False, budget_s: float = 2.0
) -> float:
    """Drift evaluations per second at the blue-line state (both terms of the plateau ODE:
    I3, I4 and noise), one state, float64; ``dense`` uses the whole-tensor baseline."""
    init = blue_line_init(p, k=k, device=device)
    act = get_activation(activation)
    coefficients = asymptotic_prefactors(Scaling(), 8.0, p)
    drift = OrderParameterDrift(
        init.P, FieldActivations(act, act, p), coefficients, noise=1e-3, integrals=DENSE if dense else Integrals()
    )
    y, t = drift.pack(init.Q, init.M), torch.zeros((), dtype=F64, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    _, first = timed(lambda: (drift(t, y), sync()))  # warm-up and a first estimate
    if first > budget_s:  # slow enough that warm-up does not matter
        return 1.0 / first
    n = max(1, min(2000, int(budget_s / max(first, 1e-6))))
    _, wall = timed(lambda: ([drift(t, y) for _ in range(n)], sync()))
    return n / wall


def drift_rates(widths: Sequence[int], device: str, budget_s: float) -> Part:
    """(3): evaluations/s of the current drift against the dense-tensor baseline, one after the other."""
    rows = []
    for p in widths:
        new = drift_rate(p, device=device, budget_s=budget_s)
        old = drift_rate(p, device=device, dense=True, budget_s=budget_s)
        rows.append([str(p), f"{new:.3g}", f"{old:.3g}", f"{new / old:.3g}"])
    return Part(
        f"(3) drift evaluations per second on {device}, k=4, erf, plateau ODE (I3 + I4 + noise), one state",
        ["p", "current [1/s]", "dense baseline [1/s]", "current / dense"],
        rows,
        [f"each rate timed over about {budget_s:g} s (one evaluation where that takes longer)"],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the drift-rate table")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the targets are for one core)")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32, 64, 128])
    parser.add_argument("--wide", action="store_true", help="also the blue line at p = 32 and 64 (minutes)")
    parser.add_argument("--limit", type=float, default=120.0, help="wall-time limit of each line in (2), seconds")
    parser.add_argument("--skip-lines", action="store_true", help="only the drift-rate table")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (tests): (1) to t = 1, no (2), (3) at p = 8 only, short timings",
    )
    parser.add_argument("--markdown", action="store_true", help="also write this run's section of --output")
    parser.add_argument(
        "--output", default=str(DOC), help="the markdown file of --markdown (default docs/benchmarks.md)"
    )
    args = parser.parse_args(argv)
    info = RunInfo.start("benchmark_ode", argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    cuda = f", CUDA: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s){cuda}; load average {info.load_start}")
    t_end, widths, budget = (1.0, [8], 0.02) if args.quick else (T_END, args.widths, 2.0)
    parts = []
    if not args.skip_lines:
        parts.append(blue_line_benchmark(t_end, euler_steps=20 if args.quick else 2000))
        print(parts[-1].text(), flush=True)
    if not (args.skip_lines or args.quick):  # --quick: (1) on a short line and (3) at p = 8 only
        parts.append(other_lines(args.limit, args.threads, args.wide))
        print(parts[-1].text(), flush=True)
    parts.append(drift_rates(widths, args.device, budget))
    print(parts[-1].text())
    print(f"load average at the end: {load_average()}")
    if args.markdown:
        body = "\n".join(part.markdown() for part in parts)
        write_section(
            args.output,
            "benchmark_ode",
            section("benchmark_ode", "ODE engine (`scripts/benchmark_ode.py`)", info, body, cuda),
        )
        print(f"wrote the benchmark_ode section of {args.output}")


if __name__ == "__main__":
    main()
