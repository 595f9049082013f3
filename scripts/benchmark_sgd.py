"""SGD throughput against the roofline of one replica-step, and against plain loops.

    python scripts/benchmark_sgd.py [--replicas 1 8 64] [--seconds 10] [--threads 1] [--device cpu]
    python scripts/benchmark_sgd.py --markdown [--output docs/benchmarks.md]   # rewrites its section there
    python scripts/benchmark_sgd.py --quick --replicas 1                       # tiny timings, nothing compiled (tests)

Roofline of one replica-step (d = 1000, p = 8, k = 4, B = 1, float32), from three rates
measured on this machine in this process:
  RNG     — the d + 1 Gaussians (x and the label noise ξ) of a step, at the rate one core
            draws them (torch normal_); the data thread draws them beside the SGD thread;
  memory  — a step that reads and writes W once ((2pd + d)·4 bytes: W in, W out, x in)
            at the bandwidth one core gets on a working set the size of R replicas' W;
  flops   — 4pd multiply-adds (the fields x Wᵀ and the rank-B update) at one core's
            float32 matmul rate.
The roofline is the slowest of the three (each on its own core: the run draws data on a
second thread); the step roofline leaves out the RNG. The rates are measured again for
each R, just before its loops, so that a bound and the loops it bounds see the same
machine load. Then, in one process, one after the other for each R:
  plain     — sgd_chunk with the eager policy: CommitteeStudent.sgd_step once per step, on
              chunks drawn by the data thread;
  compiled  — sgd_chunk with blocks of steps compiled (phasesgd.sgd.compiled), same data;
  lightning — the training loop of phasesgd.app.train (measurements, TensorBoard), compiling or
              not as a long run does (CompilePolicy's automatic choice, from the first
              step), timed over the second half of its steps (any compilation falls in the
              first; the work before/after the loop is not timed);
  step alone — the compiled sgd_chunk on data drawn beforehand, against the step roofline.

Then both engines side by side, one core, one thread each (nothing drawn on a second thread):
the SGD engine (the eager loop, fresh data drawn in the loop's thread) and the overlap chain
(OverlapChain.run driven by a CommitteeStudent's field_step, compiled cycles where the compile
policy would run them and eagerly, and the Chain engine),
at d ∈ {10³, 10⁴, 10⁵}, p = 8, k = 4 and at d = 10⁴, p = 128, k = 1, for R ∈ {1, 64, 1024};
each against its own roofline from rates measured in the same run just before the cell (see
ENGINE_NOTES), and the issue's targets, met or missed, below the table.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from phasesgd.app.build import build_module, build_trainer
from phasesgd.infra import report as doc
from phasesgd.infra.console import quiet_console
from phasesgd.sgd.chain import OverlapChain, _chi2, standard_normal
from phasesgd.sgd.compiled import CompilePolicy
from phasesgd.sgd.data import GaussianStream
from phasesgd.sgd.engines import Chain
from phasesgd.sgd.loop import EAGER, advance, sgd_chunk
from phasesgd.sgd.networks import CommitteeStudent, Teacher

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"  # the configs of this checkout, beside this script
D, P, K = 1000, 8, 4
CHUNK = 512
QUICK_RUN = ("~logger", "callbacks.order_parameters=null", "callbacks.results=null")  # --quick: the loop alone


def _seconds_per_call(fn, min_seconds: float = 0.5, device: str = "cpu") -> float:
    """Wall time of one call of ``fn``, after a warm-up call: batches of calls, doubling until
    one lasts ``min_seconds`` (on CUDA the clock stops once the batch's kernels are done, so
    it times the kernels, not their launches, without a wait between two calls)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        seconds = time.perf_counter() - start
        if seconds >= min_seconds:
            return seconds / calls
        calls *= 2


def roofline(replicas: int, device: str, min_seconds: float = 0.5, dim: int = D) -> dict[str, float]:
    """Replica-steps/s allowed by the RNG, memory bandwidth and flops (see module doc)."""
    timed = lambda fn: _seconds_per_call(fn, min_seconds, device)  # noqa: E731
    gen = torch.Generator(device).manual_seed(0)
    buffer = torch.empty(2**22, device=device)
    gaussians = buffer.numel() / timed(lambda: buffer.normal_(generator=gen))
    w, v = torch.randn(replicas, P, dim, device=device), torch.randn(replicas, P, dim, device=device)
    bandwidth = 3 * 4 * w.numel() / timed(lambda: w.add_(v, alpha=1e-6))  # 2 reads, 1 write
    a, b = torch.randn(512, 512, device=device), torch.randn(512, 512, device=device)
    flops = 2 * 512**3 / timed(lambda: a @ b)
    rates = {
        "rng": gaussians / (dim + 1),
        "memory": bandwidth / ((2 * P * dim + dim) * 4),
        "flops": flops / (4 * P * dim),
    }
    measured = {"gaussians_per_s": gaussians, "bytes_per_s": bandwidth, "flops_per_s": flops}
    return rates | measured | {"roofline": min(rates.values())}


def loop_rate(replicas: int, steps: int, device: str, policy: CompilePolicy) -> float:
    """Steps/s of sgd_chunk on chunks of the data thread (labels included), under ``policy``."""
    teacher = Teacher(width=K, dim=D, noise=1e-3).to(device)
    student = CommitteeStudent(width=P, dim=D, replicas=replicas).to(device)
    stream = GaussianStream(chunk_steps=CHUNK)
    stream.bind(D, 0, range(replicas), torch.device(device), torch.float32)
    rates = torch.full((CHUNK,), 8.0, dtype=torch.float64)
    with torch.no_grad():
        for done in range(-CHUNK, steps, CHUNK):  # the first chunk warms up (and compiles)
            if done == 0:
                start = time.perf_counter()
            advance(student, teacher, stream, rates, policy, next_steps=CHUNK)
        if device == "cuda":
            torch.cuda.synchronize()
    stream.close()
    return (done + CHUNK) / (time.perf_counter() - start)


def step_alone_rate(replicas: int, steps: int, device: str) -> float:
    """Steps/s of the compiled sgd_chunk on data drawn beforehand: the SGD step without the RNG."""
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(CHUNK, replicas, 1, D, device=device, generator=gen)
    y = torch.randn(CHUNK, replicas, 1, device=device, generator=gen)
    student = CommitteeStudent(width=P, dim=D, replicas=replicas).to(device)
    policy = CompilePolicy(enabled=True)
    rates = torch.full((CHUNK,), 1e-3, dtype=torch.float64)  # small: the weights stay put
    with torch.no_grad():
        seconds = _seconds_per_call(lambda: sgd_chunk(student, x, y, rates, policy), steps / 1e5, device)
    return CHUNK / seconds


class LoopTimer(L.Callback):
    """Steps/s of the training loop over the second half of the run's steps: compilation
    happens at the first chunk of at least one block of steps, in the first half."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.marks = []
        self.marks.append((time.perf_counter(), pl_module.sgd_steps))

    def on_train_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        end, steps = time.perf_counter(), pl_module.sgd_steps
        start, first = next((t, s) for t, s in self.marks if s >= steps / 2)
        self.rate = (steps - first) / (end - start)


def lightning_rate(
    replicas: int, steps: int, device: str, threads: int, policy: CompilePolicy, *overrides: str
) -> tuple[float, bool]:
    """(steps/s of the training loop, whether its steps ran compiled) under ``policy``."""
    with TemporaryDirectory() as out, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"output_dir={out}",
                f"replicas={replicas}",
                f"t_max={steps / D}",
                f"trainer.accelerator={device}",
                "trainer.enable_progress_bar=false",
                f"data.chunk_steps={CHUNK}",
                f"cpu_threads={threads}",
                "callbacks.progress=null",
                "callbacks.ode=null",
                "callbacks.checkpoint=null",
                *overrides,
            ],
        )
        module, trainer = build_module(cfg), build_trainer(cfg)
        module.compile_policy = policy
        timer = LoopTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module)
        torch.set_num_threads(threads)  # in case the run chose another count
        return timer.rate, policy.applies(module.student)


@dataclass
class Row:
    """The measurements at one R, in replica-steps/s (None: not measured, under --quick)."""

    replicas: int
    roof: dict[str, float]
    plain: float
    compiled: float | None
    compiled_ok: bool
    lightning: float
    lightning_compiled: bool
    alone: float | None

    @property
    def bound(self) -> str:
        return min(("rng", "memory", "flops"), key=self.roof.get)

    @property
    def step_roof(self) -> float:
        return min(self.roof["memory"], self.roof["flops"])


def measure(replicas: int, device: str, threads: int, seconds: float, quick: bool) -> Row:
    """One R: its roofline, then the four loops, one after the other."""
    roof = roofline(replicas, device, min_seconds=0.02 if quick else 0.5)
    probe = loop_rate(replicas, 2 * CHUNK, device, EAGER)
    steps = max(4 * CHUNK, int(probe * seconds) // CHUNK * CHUNK)
    plain = replicas * loop_rate(replicas, steps, device, EAGER)
    if quick:  # compiling alone takes seconds: only the eager loops, and no end-of-run files
        rate, _ = lightning_rate(replicas, steps, device, threads, CompilePolicy(enabled=False), *QUICK_RUN)
        return Row(replicas, roof, plain, None, False, replicas * rate, False, None)
    policy = CompilePolicy(enabled=True)
    compiled = replicas * loop_rate(replicas, 4 * steps, device, policy)
    rate, light_compiled = lightning_rate(replicas, 4 * steps, device, threads, CompilePolicy(after_steps=0))
    alone = replicas * step_alone_rate(replicas, 4 * steps, device)
    return Row(replicas, roof, plain, compiled, policy.enabled is not False, replicas * rate, light_compiled, alone)


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _ratio(x: float | None, bound: float) -> str:
    return "-" if x is None else f"{x / bound:.1%}"


def tables(rows: list[Row]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The throughput table and the one-core rates behind its bounds: (headers, rows) twice."""
    main_headers = [
        "R", "roofline", "bound", "plain", "compiled", "lightning", "step alone",
        "plain / roof", "compiled / roof", "lightning / roof", "step alone / step roof",
    ]  # fmt: skip
    main = []
    for r in rows:
        roof = r.roof["roofline"]
        compiled = _rate(r.compiled) + ("" if r.compiled is None or r.compiled_ok else " (compile failed: eager)")
        lightning = f"{r.lightning:.3g} ({'compiled' if r.lightning_compiled else 'eager'})"
        main.append([
            str(r.replicas), f"{roof:.3g}", r.bound, _rate(r.plain), compiled, lightning, _rate(r.alone),
            _ratio(r.plain, roof), _ratio(r.compiled, roof), _ratio(r.lightning, roof), _ratio(r.alone, r.step_roof),
        ])  # fmt: skip
    core_headers = [
        "R",
        "Gaussians/s",
        "GB/s",
        "working set [MB]",
        "GFLOP/s",
        "rng bound",
        "memory bound",
        "flops bound",
    ]
    core = [
        [
            str(r.replicas),
            f"{r.roof['gaussians_per_s']:.3g}",
            f"{r.roof['bytes_per_s'] / 1e9:.3g}",
            f"{r.replicas * P * D * 4 / 1e6:.3g}",
            f"{r.roof['flops_per_s'] / 1e9:.3g}",
            f"{r.roof['rng']:.3g}",
            f"{r.roof['memory']:.3g}",
            f"{r.roof['flops']:.3g}",
        ]
        for r in rows
    ]
    return main_headers, main, core_headers, core


NOTES = [
    "all rates in replica-steps/s (steps/s times R); roofline: the slowest of the three bounds below, "
    "each from one core's rate measured in this run just before the row's loops; step roof: memory and flops only",
    "plain: sgd_chunk with the eager policy (sgd_step per step) on chunks drawn by the data thread; "
    "compiled: the same with blocks of steps compiled",
    "lightning: the training loop of phasesgd.app.train (measurements, TensorBoard) over the second half of its steps, "
    "compiled or eager as CompilePolicy chooses from the first step",
    "step alone: the compiled sgd_chunk on data drawn beforehand (no RNG), against the step roof",
]


# ---------------------------------------------------------------------------------------------------------------
# Both engines side by side
# ---------------------------------------------------------------------------------------------------------------

ENGINE_DIMS = (1000, 10_000, 100_000)
ENGINE_REPLICAS = (1, 64, 1024)
WIDE = (128, 1, 10_000)  # (p, k, d) of the wide cell
QUICK_DIMS, QUICK_REPLICAS, QUICK_WIDE = (60, 120, 240), (1, 4), (128, 1, 300)  # --quick: a test of the code
ENGINE_LR = 1.0  # γ of both engines: the speed does not depend on it, only the weights must stay finite
ENGINE_NOISE = 1e-3
CHUNK_NUMBERS = 2**24  # the SGD engine's chunks hold at most this many inputs (memory), at least one step
TARGET_SPREAD, TARGET_RATE, TARGET_VS_SGD, TARGET_VS_SGD_WIDE = 0.20, 2e6, 100.0, 20.0


@dataclass
class EngineCell:
    """One (p, k, d, R): replica-steps/s of both engines and their rooflines (with the rates behind them)."""

    p: int
    k: int
    d: int
    replicas: int
    sgd: float
    sgd_roof: dict[str, float]
    chain: float
    chain_engine: float
    chain_roof: dict[str, float]
    chain_eager: float
    chain_compiled: bool

    @property
    def ratio(self) -> float:
        return self.chain / self.sgd


def _timed_steps(advance_by, unit: int, seconds: float, warm: bool = True) -> float:
    """Steps/s of ``advance_by(n)`` called until ``seconds`` have passed (at least once), after a warm-up
    step: the state moves on, so the calls are counted rather than repeated. n is ``unit`` (a chunk, a
    compression cycle), fewer where the warm-up step says that one call would take over a quarter of
    ``seconds`` (the slow cells run fewer steps rather than longer)."""
    if warm:
        start = time.perf_counter()
        advance_by(1)
        first = time.perf_counter() - start  # an overestimate: it includes the first draws
        unit = max(1, min(unit, int(seconds / (4 * first))))
    calls, start = 0, time.perf_counter()
    while True:
        advance_by(unit)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * unit / elapsed


def sgd_cell(p: int, k: int, d: int, replicas: int, seconds: float, min_seconds: float) -> tuple[float, dict]:
    """(replica-steps/s of the eager SGD loop on fresh data drawn in its own thread, its roofline)."""
    gen = torch.Generator().manual_seed(0)
    teacher = Teacher(width=k, dim=d, noise=ENGINE_NOISE)
    student = CommitteeStudent(width=p, dim=d, replicas=replicas, draw_weights=False)
    # one Gaussian draw in place: building the weights the usual way holds two copies, too many at R·p·d ~ 10⁹
    student.weight = torch.nn.Parameter(torch.empty(replicas, p, d).normal_(generator=gen), requires_grad=False)
    chunk = max(1, min(CHUNK, CHUNK_NUMBERS // (replicas * d)))
    stream = GaussianStream(chunk_steps=chunk, prefetch=False)
    stream.bind(d, 0, range(replicas), torch.device("cpu"), torch.float32)
    rates = torch.full((chunk,), ENGINE_LR, dtype=torch.float64)
    timed = lambda fn: _seconds_per_call(fn, min_seconds)  # noqa: E731
    buffer = torch.empty(2**22)
    gaussians = buffer.numel() / timed(lambda: buffer.normal_(generator=gen))
    x = torch.randn(replicas, 1, d, generator=gen)
    flops = 2 * replicas * p * d / timed(lambda: torch.bmm(x, student.weight.transpose(1, 2)))
    roof = {
        "gaussians_per_s": gaussians,
        "flops_per_s": flops,
        "rng": gaussians / (d + 1),
        "flops": flops / (4 * p * d),
    }
    roof["roofline"] = min(roof["rng"], roof["flops"])
    with torch.no_grad():
        rate = _timed_steps(lambda n: advance(student, teacher, stream, rates[:n], EAGER), chunk, seconds)
    stream.close()
    return replicas * rate, roof


def chain_cell(p: int, k: int, d: int, replicas: int, seconds: float, min_seconds: float, compiled: bool) -> dict:
    """Replica-steps/s of OverlapChain.run driven by a CommitteeStudent's field_step, eager and as a long run runs
    it (compiled cycles where CompilePolicy.chain_cycles would compile them, if ``compiled``), of the Chain engine
    (its policy likewise), and the chain's roofline."""
    gen = torch.Generator().manual_seed(0)
    slack = OverlapChain.default_max_width(p, k) - k - p
    cycle = min(slack, d - k - p)  # steps between two compressions: time whole cycles
    m = k + p + cycle / 2  # the mean width over a cycle
    timed = lambda fn: _seconds_per_call(fn, min_seconds)  # noqa: E731
    normals = 2**21 / timed(lambda: standard_normal((2**21,), gen))
    dofs = torch.full((2**16,), float(d), dtype=torch.float64)
    chi2 = dofs.numel() / timed(lambda: _chi2(dofs, gen))
    z = torch.randn(replicas, 1, int(m), dtype=torch.float64, generator=gen)
    f = torch.randn(replicas, p, int(m), dtype=torch.float64, generator=gen)
    chain = OverlapChain.from_law(p, k, d, replicas, gen)
    if chain._rows_first:  # the fields F x/√d in the chain's own layout
        flops = 2 * replicas * p * int(m) / timed(lambda: torch.bmm(f, z.transpose(1, 2)))
    else:
        flops = 2 * replicas * p * int(m) / timed(lambda: torch.bmm(z, f.transpose(1, 2)))
    a, b = torch.randn(256, 256, dtype=torch.float64), torch.randn(256, 256, dtype=torch.float64)
    peak = 2 * 256**3 / timed(lambda: a @ b)  # what the core does on a shape made for it, beside the bound
    rng = 1.0 / ((m + 2) / normals + 1.0 / chi2)  # B m + 1 + B normals and B χ² (B = 1)
    roof = {"normals_per_s": normals, "chi2_per_s": chi2, "flops_per_s": flops, "width": m, "rng": rng}
    roof["flops"] = flops / (4 * p * m)
    roof["peak_flops_per_s"], roof["peak"] = peak, peak / (4 * p * m)
    roof["roofline"] = min(roof["rng"], roof["flops"])

    student = CommitteeStudent(width=p, dim=d, replicas=replicas, dtype="float64", draw_weights=False)
    chain.share_second_layer(student.second_layer.data)
    policy = CompilePolicy(after_steps=0) if compiled else CompilePolicy(enabled=False)
    out = {"roof": roof, "compiled": False}
    with torch.no_grad():
        out["eager"] = replicas * _timed_steps(
            lambda n: chain.run(n, student.field_step, ENGINE_LR, ENGINE_NOISE), cycle, seconds
        )
        cycles = policy.chain_cycles(student, replicas, 1, 0, cycle)
        if cycles is None:
            out["chain"] = out["eager"]
        else:  # whole cycles, after two that compile (seconds) and warm up
            run = lambda n: chain.run(n, student.field_step, ENGINE_LR, ENGINE_NOISE, 1, cycles)  # noqa: E731
            run(2 * cycle + (-chain.steps) % cycle)
            out["chain"] = replicas * _timed_steps(run, cycle, seconds, warm=False)
            out["compiled"] = not cycles.failed
    student = CommitteeStudent(width=p, dim=d, replicas=replicas, dtype="float64", draw_weights=False)
    teacher = Teacher(width=k, dim=d, noise=ENGINE_NOISE, dtype="float64", draw_weights=False)
    engine = Chain(student, teacher, batch_size=1, drawn=False)
    engine.policy = policy
    engine.bind(0, torch.device("cpu"))
    rates = torch.full((2 * cycle,), ENGINE_LR, dtype=torch.float64)
    with torch.no_grad():
        engine.advance(rates, 0)  # compiles where the policy does
        out["engine"] = replicas * _timed_steps(lambda n: engine.advance(rates[:n], 0), cycle, seconds, warm=False)
    return out


def engine_cells(quick: bool) -> list[tuple[int, int, int, int]]:
    """(p, k, d, R) of every cell: p = 8, k = 4 over d and R, then the wide cell over R."""
    dims, reps, wide = (QUICK_DIMS, QUICK_REPLICAS, QUICK_WIDE) if quick else (ENGINE_DIMS, ENGINE_REPLICAS, WIDE)
    return [(P, K, d, R) for d in dims for R in reps] + [(*wide, R) for R in reps]


def measure_engines(quick: bool, seconds: float) -> list[EngineCell]:
    min_seconds = 0.02 if quick else 0.2
    cells = []
    for p, k, d, R in engine_cells(quick):
        chain = chain_cell(p, k, d, R, seconds, min_seconds, compiled=not quick)
        sgd, sgd_roof = sgd_cell(p, k, d, R, seconds, min_seconds)
        cells.append(
            EngineCell(
                p, k, d, R, sgd, sgd_roof, chain["chain"], chain["engine"], chain["roof"], chain["eager"],
                chain["compiled"],
            )
        )  # fmt: skip
        print(f"  engines p={p} k={k} d={d} R={R}: done", flush=True)
    return cells


def engine_table(cells: list[EngineCell]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "p", "k", "d", "R", "SGD", "SGD roofline", "SGD / roof", "chain", "chain (Chain engine)", "chain roofline",
        "chain / roof", "Chain engine / roof", "chain / SGD", "chain steps", "chain eager",
    ]  # fmt: skip
    rows = []
    for c in cells:
        sroof, croof = c.sgd_roof["roofline"], c.chain_roof["roofline"]
        rows.append([
            str(c.p), str(c.k), str(c.d), str(c.replicas), f"{c.sgd:.3g}", f"{sroof:.3g}", _ratio(c.sgd, sroof),
            f"{c.chain:.3g}", f"{c.chain_engine:.3g}", f"{croof:.3g}", _ratio(c.chain, croof),
            _ratio(c.chain_engine, croof), f"{c.ratio:.3g}×", "compiled" if c.chain_compiled else "eager",
            f"{c.chain_eager:.3g}",
        ])  # fmt: skip
    return headers, rows


def engine_rates_table(cells: list[EngineCell]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "p", "k", "d", "R", "SGD: Gaussians/s (f32)", "SGD: GFLOP/s (f32 bmm)", "SGD rng bound", "SGD flops bound",
        "chain: normals/s (f64)", "chain: χ²/s", "chain: GFLOP/s (f64 bmm)", "chain m", "chain rng bound",
        "chain flops bound", "chain: GFLOP/s (f64 256³ GEMM)", "chain flops bound at that rate",
    ]  # fmt: skip
    rows = []
    for c in cells:
        s, h = c.sgd_roof, c.chain_roof
        rows.append([
            str(c.p), str(c.k), str(c.d), str(c.replicas), f"{s['gaussians_per_s']:.3g}",
            f"{s['flops_per_s'] / 1e9:.3g}", f"{s['rng']:.3g}", f"{s['flops']:.3g}", f"{h['normals_per_s']:.3g}",
            f"{h['chi2_per_s']:.3g}", f"{h['flops_per_s'] / 1e9:.3g}", f"{h['width']:.3g}", f"{h['rng']:.3g}",
            f"{h['flops']:.3g}", f"{h['peak_flops_per_s'] / 1e9:.3g}", f"{h['peak']:.3g}",
        ])  # fmt: skip
    return headers, rows


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _listing(values: dict[int, float], fmt: str) -> str:
    return ", ".join(f"R={R}: {format(v, fmt)}" for R, v in values.items())


def targets(cells: list[EngineCell]) -> list[str]:
    """One line per target of the issue, met or missed, with the measured numbers."""
    narrow = [c for c in cells if (c.p, c.k) == (P, K)]
    wide = [c for c in cells if (c.p, c.k) != (P, K)]
    dims = sorted({c.d for c in narrow})
    top, big = max(c.replicas for c in cells), dims[-1]
    lines = []
    spread = {}
    for R in sorted({c.replicas for c in narrow}):
        rates = [c.chain for c in narrow if c.replicas == R]
        spread[R] = max(rates) / min(rates) - 1
    lines.append(
        f"chain rate spread over d ({', '.join(map(str, dims))}), max/min − 1: {_listing(spread, '.0%')} "
        f"(target ≤ {TARGET_SPREAD:.0%} at every R): {_verdict(max(spread.values()) <= TARGET_SPREAD)}"
    )
    at_top = {c.d: c.chain for c in narrow if c.replicas == top}
    lines.append(
        f"chain at R={top}, p={P}, k={K}: "
        + ", ".join(f"d={d}: {v:.3g}" for d, v in at_top.items())
        + f" replica-steps/s (target ≥ {TARGET_RATE:.0e} at every d): {_verdict(min(at_top.values()) >= TARGET_RATE)}"
    )
    for name, group, d, target in (
        ("p=8, k=4", narrow, big, TARGET_VS_SGD),
        ("p=128, k=1", wide, None, TARGET_VS_SGD_WIDE),
    ):
        ratios = {c.replicas: c.ratio for c in group if d is None or c.d == d}
        where = f"d={d}" if d is not None else f"d={group[0].d}"
        missed = [R for R, r in ratios.items() if r < target]
        verdict = "met at every R" if not missed else f"MISSED at R={', '.join(map(str, missed))}"
        lines.append(f"chain / SGD at {name}, {where}: {_listing(ratios, '.3g')} (target ≥ {target:g}×): {verdict}")
    return lines


ENGINE_NOTES = [
    "one core, one thread per engine: the SGD engine is the eager loop (sgd_step per step, EAGER policy) on "
    "fresh inputs and labels drawn in its own thread (GaussianStream without prefetch), float32; the chain is "
    "OverlapChain.run driven by CommitteeStudent.field_step (erf; draw_weights=False, float64), B = 1, as a long "
    "run runs it: whole cycles compiled where CompilePolicy.chain_cycles compiles them (column 'chain steps'; "
    "after two warm-up cycles, compilation not timed), else eager; 'chain eager': the same chain step by step; "
    "'Chain engine': phasesgd.sgd.engines.Chain.advance under the same policy; all in replica-steps/s, same γ and Δ",
    "each cell is timed for a fixed wall time after a warm-up call, so the slow cells (SGD at R·p·d ~ 10⁹) "
    "run fewer steps; the chain is timed over whole compression cycles",
    "SGD roofline = min(G/(d + 1), F/(4 p d)): d + 1 Gaussians (x and ξ) and ≈ 4 p d flops (fields x Wᵀ and "
    "the rank-1 update) per replica-step; G: one core's float32 normal_ rate, F: the float32 bmm of the step's "
    "fields, (R, 1, d) × (R, d, p) on the cell's own W (at large R p d this streams W from memory, as the step does)",
    "chain roofline = min(1/((m + 2)/N + 1/X), F₆₄/(4 p m)): m + 2 normals (z, the slot of the orthogonal "
    "length, ξ) and one χ² per replica-step (B = 1) with m = k + p + slack/2 the mean width between compressions "
    "(slack = max(p, 16)), and ≈ 4 p m flops (fields F x, update); N: the chain's float64 normal sampler "
    "(standard_normal, 2²¹ numbers), X: its χ² sampler, F₆₄: the float64 bmm of the fields in the chain's layout "
    "((R, p, m) × (R, m, 1) for p ≤ 16 and R ≥ 8, else (R, 1, m) × (R, m, p); the rates table adds a 256³ GEMM, "
    "the rate the core reaches on a shape made for it); the rule's O(p) work, the compressions (a p × p Gram and "
    "its Cholesky factor every slack steps) and call overheads are left out",
    "each roofline takes the slower ceiling alone; one core does both in turn, so the sum of the two times "
    "would be a tighter bound; all rates are measured just before the cell, under the same machine load",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="rough time per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the config's cpu_threads)")
    parser.add_argument(
        "--engine-seconds", type=float, default=3.0, help="wall time per engine per cell of the engine table"
    )
    parser.add_argument("--quick", action="store_true", help="tiny timings and no compiled loops (tests)")
    parser.add_argument("--markdown", action="store_true", help="also write this run's section of --output")
    parser.add_argument(
        "--output", default=str(doc.DOC), help="the markdown file of --markdown (default docs/benchmarks.md)"
    )
    args = parser.parse_args(argv)
    info = doc.RunInfo.start("benchmark_sgd", argv)
    quiet_console()  # the table alone, not Lightning's messages for every timed run
    torch.set_num_threads(args.threads)
    seconds = min(args.seconds, 0.01) if args.quick else args.seconds
    setting = f"d={D} p={P} k={K} B=1 float32 device={args.device} threads={torch.get_num_threads()}"
    print(f"{setting}; load average {info.load_start}", flush=True)
    rows = []
    for R in args.replicas:
        rows.append(measure(R, args.device, args.threads, seconds, args.quick))
        print(f"  R={R}: done", flush=True)
    main_headers, main_rows, core_headers, core_rows = tables(rows)
    print(doc.text_table(main_headers, main_rows, indent=""))
    print(doc.text_table(core_headers, core_rows, indent=""))
    torch.set_num_threads(1)  # the engine table is on one core whatever --threads
    cells = measure_engines(args.quick, min(args.engine_seconds, 0.01) if args.quick else args.engine_seconds)
    torch.set_num_threads(args.threads)
    engine_headers, engine_rows = engine_table(cells)
    rates_headers, rates_rows = engine_rates_table(cells)
    target_lines = targets(cells)
    print(doc.text_table(engine_headers, engine_rows, indent=""))
    print(doc.text_table(rates_headers, rates_rows, indent=""))
    print("\n".join(target_lines))
    print(f"load average at the end: {doc.load_average()}")
    if args.markdown:
        notes = NOTES + (
            ["--quick: tiny timings, nothing compiled (a test of this writer, not a benchmark)"] if args.quick else []
        )
        body = "\n".join(
            [
                f"### Replica-steps/s against the roofline ({setting})",
                "",
                doc.markdown_table(main_headers, main_rows),
                "",
                *(f"- {n}" for n in notes),
                "",
                "### One core's rates, measured in this run, and the bounds they give [replica-steps/s]",
                "",
                doc.markdown_table(core_headers, core_rows),
                "",
                "### Both engines side by side, one core each [replica-steps/s]",
                "",
                doc.markdown_table(engine_headers, engine_rows),
                "",
                "Targets of the overlap-chain issue:",
                "",
                *(f"- {t}" for t in target_lines),
                "",
                *(
                    f"- {n}"
                    for n in ENGINE_NOTES + (["--quick: tiny d and R (a test, not a benchmark)"] if args.quick else [])
                ),
                "",
                "### The rates behind the engine rooflines, measured in this run",
                "",
                doc.markdown_table(rates_headers, rates_rows),
            ]
        )
        text = doc.section("benchmark_sgd", "SGD throughput (`scripts/benchmark_sgd.py`)", info, body)
        doc.write_section(args.output, "benchmark_sgd", text)
        print(f"wrote the benchmark_sgd section of {args.output}")


if __name__ == "__main__":
    main()
