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

This file also holds the writer of docs/benchmarks.md's sections (:func:`write_section`),
which scripts/benchmark_sgd.py and scripts/gpu_check.py load from it: one writer, so the
three sections share one header and one format.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from phasesgd.infra.io import atomic_path
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

DOC = ROOT / "docs" / "benchmarks.md"
SECTIONS = ("benchmark_sgd", "benchmark_ode", "gpu_check")  # their order in the file
HEADER = """# Benchmarks

Generated: do not edit by hand. Each section is written whole by one run of its script,

    python scripts/benchmark_sgd.py --markdown
    python scripts/benchmark_ode.py --markdown
    python scripts/gpu_check.py --markdown      # on a CUDA machine only

and replaced by the next run of the same script; the other sections stay as they are (text
outside the sections is not kept). A section holds the numbers of one run only, each against
a bound or baseline measured in that same run, with the date, revision, machine and load it
ran under. Absolute timings depend on the machine and its load; the ratios within a section
do so far less.
"""
_MARK = re.compile(r"<!-- (\w+): begin -->\n.*?<!-- \1: end -->\n?", re.DOTALL)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, or '?' where the OS has none."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def revision() -> str:
    """The git revision of the tree, marked when it has uncommitted changes."""
    try:
        head, dirty = _git("rev-parse", "--short", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head} with uncommitted changes" if dirty else head


@dataclass
class RunInfo:
    """What a section states besides its tables: when, what code, which machine, which command.
    Built at the start of a run (:meth:`start`), so the load average before the run is kept."""

    script: str
    argv: list[str]
    date: str
    revision: str
    load_start: str

    @classmethod
    def start(cls, script: str, argv: Sequence[str] | None) -> RunInfo:
        argv = list(sys.argv[1:] if argv is None else argv)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return cls(script, argv, now, revision(), load_average())

    @property
    def command(self) -> str:
        return shlex.join(["python", f"scripts/{self.script}.py", *self.argv])

    def lines(self, device: str = "") -> list[str]:
        cores = os.cpu_count()
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
        machine = f"{cpu_model()}, {cores} cores ({usable} usable), torch {torch.__version__}"
        return [
            f"- date: {self.date}",
            f"- revision: {self.revision}",
            f"- machine: {machine}{device}; {torch.get_num_threads()} torch thread(s)",
            f"- load average (1 / 5 / 15 min): {self.load_start} at the start, {load_average()} at the end",
            f"- command: `{self.command}`",
        ]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` holds one of 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in [headers, rule, *rows])


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "    ") -> str:
    """The same table as aligned plain text, for the console."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, *rows]:
        cells = [f"{str(x):<{w}}" if i == 0 else f"{str(x):>{w}}" for i, (x, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells))
    return "\n".join(lines)


def section(name: str, title: str, info: RunInfo, body: str, device: str = "") -> str:
    """The text of one section, markers included."""
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}; one of {SECTIONS}")
    parts = [
        f"<!-- {name}: begin -->",
        f"## {title}",
        "",
        *info.lines(device),
        "",
        body.strip(),
        f"<!-- {name}: end -->",
    ]
    return "\n".join(parts) + "\n"


def write_section(path: str | os.PathLike, name: str, text: str) -> None:
    """Put section ``name`` (the text of :func:`section`) into the file at ``path``,
    replacing the one of that name and keeping the others, in :data:`SECTIONS` order under
    :data:`HEADER`. Written atomically (a temporary file renamed over it), so a reader or an
    interrupted run never sees a half-written file."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    found = {m.group(1): m.group(0).rstrip("\n") + "\n" for m in _MARK.finditer(old)}
    found[name] = text
    order = [s for s in SECTIONS if s in found] + [s for s in found if s not in SECTIONS]
    with atomic_path(path) as tmp:
        tmp.write_text(HEADER + "".join("\n" + found[s] for s in order), encoding="utf-8")


def read_sections(path: str | os.PathLike) -> dict[str, str]:
    """The sections of a file written by :func:`write_section`, by name."""
    return {m.group(1): m.group(0) for m in _MARK.finditer(Path(path).read_text(encoding="utf-8"))}


# ----- the setting ----------------------------------------------------------------------------


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
