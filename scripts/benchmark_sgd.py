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
from phasesgd.sgd.compiled import CompilePolicy
from phasesgd.sgd.data import GaussianStream
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="rough time per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the config's cpu_threads)")
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
            ]
        )
        text = doc.section("benchmark_sgd", "SGD throughput (`scripts/benchmark_sgd.py`)", info, body)
        doc.write_section(args.output, "benchmark_sgd", text)
        print(f"wrote the benchmark_sgd section of {args.output}")


if __name__ == "__main__":
    main()
