"""Benchmark of the ODE engine (phasesgd.ode): every figure a ratio measured in this run.

Setting: k = 4 teachers, erf, Δ = 1e-3, γ0 = 8, asymptotic mode, the "blue line"
(docs/theory.md §5), from Gaussian students at d = 1000 (Q_jj = 1, M ~ 1/√d), P = I.

(1) Blue line to t = 1000 at p = 8: the default solve (``method='auto'``) against
    - the previous engine, run here: dopri5 at rtol 1e-6 on the dense-tensor drift
      (whole I3 and I4 tensors contracted by einsum, as before the contraction rewrite);
    - forward Euler with one step per SGD step at d = 1000 (dt = 1e-3, 10⁶ steps),
      extrapolated from 2000 timed steps of the current drift;
    - the published Cython Euler code's 185 s (a fixed reference, not run here).
    Accuracy: max_t |R − R_ref| relative to max R_ref, and max_t |R/R_ref − 1|, against
    dopri8 at rtol 1e-11.
(2) relu (student and teacher) at p = 8, same line; wider blue lines (``--wide``: p = 32, 64)
    and the green asymptotic line (δ = 1/2, perfect region: no I4 term) at p = 256 to t = 100.
(3) Drift evaluations per second at p = 8, 32, 64, 128, current against the dense-tensor
    baseline (``--device cuda`` times CUDA instead; :func:`drift_rate` is importable).

    python scripts/benchmark_ode.py [--device cpu|cuda] [--threads N] [--wide] [--widths 8 32 64 128]

Timings on a shared machine are inflated by its load; the ratios within one run are not.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from phasesgd.ode import ODEBudgetExceeded, SolverOptions
from phasesgd.ode.drift import MAX_I4_ENTRIES, OrderParameterDrift, asymptotic_prefactors
from phasesgd.ode.problem import prepare
from phasesgd.ode.solve import run
from phasesgd.theory.activations import get_activation
from phasesgd.theory.integrals import FieldActivations, i3, i4
from phasesgd.theory.order_parameters import order_parameters
from phasesgd.theory.scaling import Scaling

F64 = torch.float64
BLUE = dict(gamma0=8.0, noise=1e-3)
T_END = 1000.0
CYTHON_EULER_S = 185.0  # the published code, blue line to t = 1000 (issue 8)
TARGETS_S = {"blue p=8": 0.6, "blue p=32": 20.0, "blue p=64": 300.0, "relu p=8": 2.0, "green p=256": 300.0}


def blue_line_init(p: int, k: int = 4, d: int = 1000, seed: int = 0, device: str = "cpu"):
    """Gaussian student rows (Q_jj = 1, M ~ 1/√d), orthonormal teacher (P = I)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(p, d, generator=g, dtype=F64)
    W = W * (math.sqrt(d) / W.norm(dim=1, keepdim=True))
    W_star = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64)).Q.T * math.sqrt(d)
    overlaps = order_parameters(W, W_star)
    Q, M = overlaps.Q, overlaps.M
    return Q.to(device), M.to(device), torch.eye(k, dtype=F64, device=device)


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


def use_dense_baseline(drift: OrderParameterDrift) -> OrderParameterDrift:
    drift.weighted_i3, drift.upsilon = dense_weighted_i3, dense_upsilon
    return drift


def solve_blue(p: int, dense: bool = False, activation: str = "erf", t_end: float = T_END, delta: float = 0.0, **options):
    """(solution, seconds) of the blue line (or, with δ = 1/2, the green one) from t = 0 to t_end."""
    Q, M, P = blue_line_init(p)
    problem = prepare(Q, M, P, **BLUE, delta=delta, t_eval=np.linspace(0.0, t_end, 101), student_activation=activation, teacher_activation=activation)
    if dense:
        use_dense_baseline(problem.drift)
    return timed(lambda: run(problem, SolverOptions(**options)))


def euler_seconds_per_step(p: int, steps: int = 2000) -> float:
    """Wall time of one forward-Euler step y ← y + dt f(y) of the current drift."""
    Q, M, P = blue_line_init(p)
    fields = FieldActivations(get_activation("erf"), get_activation("erf"), p)
    drift = OrderParameterDrift(P, fields, asymptotic_prefactors(Scaling(), BLUE["gamma0"], p), noise=BLUE["noise"])
    y, dt = drift.pack(Q, M), 1e-3
    start = time.perf_counter()
    for n in range(steps):
        y = y + dt * drift(torch.tensor(n * dt, dtype=F64), y)
    return (time.perf_counter() - start) / steps


def errors(risk: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max |R − R_ref| / max R_ref, max |R/R_ref − 1|)."""
    return float(np.abs(risk - reference).max() / reference.max()), float(np.abs(risk / reference - 1).max())


def blue_line_benchmark() -> dict[str, float]:
    reference, _ = solve_blue(8, method="dopri8", rtol=1e-11, atol=1e-13)
    rows = []
    for name, kwargs in (("auto (default)", {}), ("previous: dense drift, dopri5", dict(dense=True, method="dopri5"))):
        sol, wall = solve_blue(8, **kwargs)
        rows.append((name, sol.method, wall, sol.evaluations, *errors(sol.risk, reference.risk)))
    euler = euler_seconds_per_step(8) * T_END / 1e-3
    new, old = rows[0][2], rows[1][2]
    print(
        f"(1) blue line to t={T_END:g}, p=8, k=4, erf, Δ=1e-3, γ0=8 (asymptotic); reference dopri8 rtol=1e-11, "
        f"R_ref(t={T_END:g}) = {reference.risk[-1]:.4e}"
    )
    print(f"    {'engine':32s} {'method':12s} {'wall [s]':>9s} {'evals':>7s} {'err/maxR':>9s} {'max rel':>9s}")
    for name, method, wall, evals, err_max, err_rel in rows:
        print(f"    {name:32s} {method:12s} {wall:9.2f} {evals:7d} {err_max:9.1e} {err_rel:9.1e}")
    print(f"    forward Euler dt=1e-3 (one step per SGD step at d=1000), extrapolated: {euler:.0f} s")
    print(
        f"    speed-up of the default solve: {old / new:.1f}x the previous engine, {euler / new:.0f}x Euler dt=1e-3; "
        f"the published Cython Euler ({CYTHON_EULER_S:g} s) over it: {CYTHON_EULER_S / new:.0f}x "
        f"(target 300x = {CYTHON_EULER_S / 300:.2f} s)"
    )
    return {"blue p=8": new, "blue p=8 previous": old}


def line(name: str, p: int, limit_s: float, **kwargs) -> float:
    """Wall time of one default solve (inf if it ran past ``limit_s``), printed with its target."""
    target = TARGETS_S.get(name, math.nan)
    try:
        sol, wall = solve_blue(p, max_seconds=limit_s, **kwargs)
    except ODEBudgetExceeded as err:
        print(f"    {name:14s} over the {limit_s:g} s limit ({err}); target {target:g} s", flush=True)
        return math.inf
    print(f"    {name:14s} {sol.method:12s} {wall:9.1f} s {sol.evaluations:7d} evals   target {target:g} s", flush=True)
    return wall


def drift_rate(p: int, k: int = 4, device: str = "cpu", activation: str = "erf", dense: bool = False, budget_s: float = 2.0) -> float:
    """Drift evaluations per second at the blue-line state (both terms of the plateau ODE:
    I3, I4 and noise), one state, float64; ``dense`` uses the whole-tensor baseline."""
    Q, M, P = blue_line_init(p, k=k, device=device)
    act = get_activation(activation)
    drift = OrderParameterDrift(P, FieldActivations(act, act, p), asymptotic_prefactors(Scaling(), 8.0, p), noise=1e-3)
    if dense:
        use_dense_baseline(drift)
    y, t = drift.pack(Q, M), torch.zeros((), dtype=F64, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    _, first = timed(lambda: (drift(t, y), sync()))  # warm-up and a first estimate
    if first > budget_s:  # slow enough that warm-up does not matter
        return 1.0 / first
    n = max(1, min(2000, int(budget_s / max(first, 1e-6))))
    _, wall = timed(lambda: ([drift(t, y) for _ in range(n)], sync()))
    return n / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the drift-rate table")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the targets are for one core)")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32, 64, 128])
    parser.add_argument("--wide", action="store_true", help="also the blue line at p = 32 and 64 (minutes)")
    parser.add_argument("--limit", type=float, default=120.0, help="wall-time limit of each line in (2), seconds")
    parser.add_argument("--skip-lines", action="store_true", help="only the drift-rate table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), CUDA: {torch.cuda.is_available()}")
    if not args.skip_lines:
        blue_line_benchmark()
        print(f"(2) other lines, default solve, {args.threads} thread(s)")
        line("relu p=8", 8, args.limit, activation="relu", threads=args.threads)
        line("green p=256", 256, args.limit, delta=0.5, t_end=100.0, threads=args.threads)
        if args.wide:
            for p in (32, 64):
                line(f"blue p={p}", p, 2 * args.limit, threads=args.threads)
    print(f"(3) drift evaluations per second on {args.device}, k=4, erf, plateau ODE (I3 + I4 + noise), one state")
    print(f"    {'p':>5s} {'current':>10s} {'dense':>10s} {'ratio':>7s}")
    for p in args.widths:
        new = drift_rate(p, device=args.device)
        old = drift_rate(p, device=args.device, dense=True)
        print(f"    {p:5d} {new:10.3g} {old:10.3g} {new / old:7.1f}", flush=True)


if __name__ == "__main__":
    main()
