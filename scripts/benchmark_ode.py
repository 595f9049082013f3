"""Benchmark of the ODE engine (phasesgd.ode).

(1) The blue line (k = 4, p = 8, erf, Δ = 1e-3, γ0 = 8, asymptotic mode) from t = 0 to
    1000: wall time and risk-curve error of dopri5 (rtol 1e-6) and BDF against forward
    Euler of the same drift at dt = 1e-3 (one Euler step per SGD step at d = 1000, as in
    the paper's code). Errors are measured against dopri8 at rtol 1e-10. The Euler run at
    dt = 1e-3 (10⁶ steps) is not run by default: its wall time is extrapolated linearly
    from the measured cost of 2000 steps, and its error, ∝ dt for forward Euler, from a
    full run at dt = 0.05 (a second full run at dt = 0.1 checks the slope).
    ``--euler-full`` runs it for real.
(2) Drift evaluations per second for p = 8, 32, 64, 128 (k = 4, erf, both terms of the
    plateau ODE, one state), on the CPU and on CUDA when available.

    python scripts/benchmark_ode.py [--device cpu|cuda|all] [--threads N] [--widths 8 32 64 128] [--euler-full]

About 5 minutes on one CPU thread, most of it in the p = 128 drift and the Euler runs.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from phasesgd.activations import get_activation
from phasesgd.integrals import FieldActivations
from phasesgd.ode import solve_ode
from phasesgd.ode.drift import MAX_I4_ENTRIES, OrderParameterDrift, asymptotic_prefactors
from phasesgd.order_parameters import order_parameters, risk_from_overlaps
from phasesgd.regimes import Scaling

F64 = torch.float64
BLUE = dict(gamma0=8.0, noise=1e-3)
T_END = 1000.0


def blue_line_init(p: int, k: int = 4, d: int = 1000, seed: int = 0, device: str = "cpu"):
    """Gaussian student rows (Q_jj = 1, M ~ 1/√d), orthonormal teacher (P = I)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(p, d, generator=g, dtype=F64)
    W = W * (math.sqrt(d) / W.norm(dim=1, keepdim=True))
    W_star = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64)).Q.T * math.sqrt(d)
    Q, M, _ = order_parameters(W, W_star)
    return Q.to(device), M.to(device), torch.eye(k, dtype=F64, device=device)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def euler(Q, M, P, dt: float, t_out: np.ndarray, steps: int | None = None) -> tuple[np.ndarray, float]:
    """Forward Euler y ← y + dt f(y) of the drift, risk at the multiples of dt in t_out.
    With ``steps``, only that many steps are run (for timing). Returns (risk, seconds/step)."""
    fields = FieldActivations(get_activation("erf"), get_activation("erf"), Q.shape[-1])
    drift = OrderParameterDrift(P, fields, asymptotic_prefactors(Scaling(), BLUE["gamma0"], Q.shape[-1]), noise=BLUE["noise"])
    y = drift.pack(Q, M)
    marks = {int(round(t / dt)): i for i, t in enumerate(t_out)}
    n_steps = steps if steps is not None else max(marks)
    risk = np.full(len(t_out), np.nan)
    start = time.perf_counter()
    for n in range(n_steps + 1):
        if n in marks:
            Qn, Mn, _ = drift.unpack(y)
            risk[marks[n]] = float(risk_from_overlaps(Qn, Mn, P))
        if n < n_steps:
            y = y + dt * drift(torch.tensor(n * dt, dtype=F64), y)
    return risk, (time.perf_counter() - start) / max(n_steps, 1)


def blue_line_benchmark(euler_full: bool) -> None:
    Q, M, P = blue_line_init(8)
    t_out = np.linspace(0.0, T_END, 101)
    ref, t_ref = timed(lambda: solve_ode(Q, M, P, **BLUE, t_eval=t_out, method="dopri8", rtol=1e-10, atol=1e-13))
    print(f"(1) blue line, t = 0..{T_END:g}, k=4, p=8, erf, Δ=1e-3, γ0=8 (asymptotic); risk error = max_t |R − R_ref| "
          f"against dopri8 rtol=1e-10 ({ref.evaluations} evals, {t_ref:.1f} s); R_ref(t={T_END:g}) = {ref.risk[-1]:.4e}")
    rows = []
    for method, kw in (("dopri5", {}), ("BDF", {})):
        sol, wall = timed(lambda: solve_ode(Q, M, P, **BLUE, t_eval=t_out, method=method, rtol=1e-6, atol=1e-9, **kw))
        rows.append((f"{method} rtol=1e-6", wall, sol.evaluations, np.abs(sol.risk - ref.risk).max()))
    euler_errors = {}
    for dt in (0.1, 0.05):
        (risk, per_step), wall = timed(lambda: euler(Q, M, P, dt, t_out))
        euler_errors[dt] = np.abs(risk - ref.risk).max()
        rows.append((f"Euler dt={dt:g}", wall, round(T_END / dt), euler_errors[dt]))
    slope = math.log(euler_errors[0.1] / euler_errors[0.05]) / math.log(2.0)
    if euler_full:
        (risk, per_step), wall = timed(lambda: euler(Q, M, P, 1e-3, t_out))
        rows.append(("Euler dt=1e-3 (run)", wall, round(T_END / 1e-3), np.abs(risk - ref.risk).max()))
    else:
        _, per_step = euler(Q, M, P, 1e-3, t_out, steps=2000)
        est_error = euler_errors[0.05] * (1e-3 / 0.05)  # first order (slope printed below)
        rows.append(("Euler dt=1e-3 (extrapolated)", per_step * T_END / 1e-3, round(T_END / 1e-3), est_error))
    print(f"    {'method':30s} {'wall [s]':>10s} {'evals/steps':>12s} {'risk error':>12s}")
    for name, wall, n, err in rows:
        print(f"    {name:30s} {wall:10.2f} {n:12d} {err:12.3e}")
    print(f"    Euler error slope in dt: {slope:.2f} (1 = first order); Euler time/step {per_step * 1e3:.2f} ms")
    print(f"    speed-up dopri5 vs Euler dt=1e-3: {rows[-1][1] / rows[0][1]:.0f}x; BDF vs Euler: {rows[-1][1] / rows[1][1]:.0f}x")


def drift_rate(p: int, device: str, budget_s: float = 2.0, max_entries: int = MAX_I4_ENTRIES) -> tuple[float, float]:
    """Drift evaluations per second (and peak CUDA memory in GiB) at the blue-line init."""
    Q, M, P = blue_line_init(p, device=device)
    fields = FieldActivations(get_activation("erf"), get_activation("erf"), p)
    drift = OrderParameterDrift(
        P, fields, asymptotic_prefactors(Scaling(), 8.0, p), noise=1e-3, max_i4_entries=max_entries
    )
    y, t = drift.pack(Q, M), torch.zeros((), dtype=F64, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, first = timed(lambda: (drift(t, y), sync()))  # warm-up (and a first estimate)
    if first > budget_s:  # slow enough that warm-up effects do not matter: keep this one
        return 1.0 / first, torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    n = max(1, min(1000, int(budget_s / max(first, 1e-6))))
    _, wall = timed(lambda: ([drift(t, y) for _ in range(n)], sync()))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return n / wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the p = 8 tensors are small, and OpenMP hand-offs "
                             "dominate them, badly so on a busy machine; more threads help from p ~ 64)")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32, 64, 128])
    parser.add_argument("--euler-full", action="store_true", help="run Euler at dt=1e-3 for real (~30 min on a CPU)")
    parser.add_argument("--skip-blue-line", action="store_true")
    parser.add_argument("--max-i4-entries", type=int, default=MAX_I4_ENTRIES, help="I4 block size before chunking rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}")
    if not args.skip_blue_line:
        blue_line_benchmark(args.euler_full)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [dv for dv in devices if dv == "cpu" or torch.cuda.is_available()]
    print(f"(2) drift evaluations per second, k=4, erf, plateau ODE (I3 + I4 + noise), one state; "
          f"I4 rows chunked above {args.max_i4_entries:.2e} numbers")
    header = " ".join(f"{dv + ' evals/s':>14s}" for dv in devices) + ("   cuda peak GiB" if "cuda" in devices else "")
    print(f"    {'p':>5s} {header}")
    for p in args.widths:
        rates = [drift_rate(p, dv, max_entries=args.max_i4_entries) for dv in devices]
        peak = f"   {rates[-1][1]:.2f}" if "cuda" in devices else ""
        print(f"    {p:5d} " + " ".join(f"{r:14.3g}" for r, _ in rates) + peak, flush=True)


if __name__ == "__main__":
    main()
