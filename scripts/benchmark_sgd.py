"""SGD throughput against the roofline of one replica-step, and against plain loops.

    python scripts/benchmark_sgd.py [--replicas 1 8 64] [--seconds 10] [--threads 1] [--device cpu]

Roofline of one replica-step (d = 1000, p = 8, k = 4, B = 1, float32), from three rates
measured on this machine in this process:
  RNG     — the d + 1 Gaussians (x and the label noise ξ) of a step, at the rate one core
            draws them (torch normal_); the data thread draws them beside the SGD thread;
  memory  — a step that reads and writes W once ((2pd + d)·4 bytes: W in, W out, x in)
            at the bandwidth one core gets on a working set the size of R replicas' W;
  flops   — 4pd multiply-adds (the fields x Wᵀ and the rank-B update) at one core's
            float32 matmul rate.
The roofline is the slowest of the three (each on its own core: the run draws data on a
second thread); the step roofline leaves out the RNG. Then, in one process, one after
the other for each R so that machine load hits all alike:
  plain     — CommitteeStudent.sgd_step once per step on prefetched chunks (the loop as it was);
  compiled  — sgd_chunk with blocks of steps compiled (phasesgd.sgd.compiled), same data;
  lightning — the training loop of phasesgd.app.run (measurements, TensorBoard), compiling or
              not as a long run does (compiled blocks while R·p·d < 2^18, eager steps
              above), timed over the second half of its steps (any compilation falls in the
              first; the work before/after the loop is not timed);
  step alone — the compiled sgd_chunk on data drawn beforehand, against the step roofline.
"""

from __future__ import annotations

import argparse
import os
import time
from tempfile import TemporaryDirectory

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from phasesgd.app.run import build_module, build_trainer
from phasesgd.infra.console import quiet_console
from phasesgd.infra.paths import config_dir
from phasesgd.sgd.data import GaussianStream
from phasesgd.sgd.networks import CommitteeStudent, Teacher

D, P, K = 1000, 8, 4
CHUNK = 512


def _seconds_per_call(fn, min_seconds: float = 0.5) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def roofline(replicas: int, device: str) -> dict[str, float]:
    """Replica-steps/s allowed by the RNG, memory bandwidth and flops (see module doc)."""
    gen = torch.Generator(device).manual_seed(0)
    buffer = torch.empty(2**22, device=device)
    gaussians = buffer.numel() / _seconds_per_call(lambda: buffer.normal_(generator=gen))
    w, v = torch.randn(replicas, P, D, device=device), torch.randn(replicas, P, D, device=device)
    bandwidth = 3 * 4 * w.numel() / _seconds_per_call(lambda: w.add_(v, alpha=1e-6))  # 2 reads, 1 write
    a, b = torch.randn(512, 512, device=device), torch.randn(512, 512, device=device)
    flops = 2 * 512**3 / _seconds_per_call(lambda: a @ b)
    rates = {"rng": gaussians / (D + 1), "memory": bandwidth / ((2 * P * D + D) * 4), "flops": flops / (4 * P * D)}
    return rates | {"roofline": min(rates.values()), "gaussians_per_s": gaussians, "bytes_per_s": bandwidth, "flops_per_s": flops}


def loop_rate(replicas: int, steps: int, device: str, compiled: bool) -> float:
    """Steps/s of student.sgd_chunk on prefetched chunks (labels included), compiled or step by step."""
    teacher = Teacher(width=K, dim=D, noise=1e-3).to(device)
    student = CommitteeStudent(width=P, dim=D, replicas=replicas).to(device)
    student.compile_steps = compiled
    stream = GaussianStream(chunk_steps=CHUNK)
    stream.bind(D, 0, range(replicas), torch.device(device), torch.float32)
    rates = torch.full((CHUNK,), 8.0, dtype=torch.float64)
    with torch.no_grad():
        for done in range(-CHUNK, steps, CHUNK):  # the first chunk warms up (and compiles)
            if done == 0:
                start = time.perf_counter()
            batch = stream.draw(CHUNK, next_steps=CHUNK)
            student.sgd_chunk(batch.inputs, teacher.labels(batch.inputs, batch.label_noise), rates)
            stream.release(batch)
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
    student.compile_steps = True
    rates = torch.full((CHUNK,), 1e-3, dtype=torch.float64)  # small: the weights stay put
    with torch.no_grad():
        seconds = _seconds_per_call(lambda: student.sgd_chunk(x, y, rates), min_seconds=steps / 1e5)
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


def lightning_rate(replicas: int, steps: int, device: str, threads: int) -> float:
    with TemporaryDirectory() as out, initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
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
            ],
        )
        module, trainer = build_module(cfg), build_trainer(cfg)
        module.student.compile_after = 0  # the automatic choice, from the first step
        timer = LoopTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module)
        torch.set_num_threads(threads)  # in case the run chose another count
        return timer.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="rough time per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the config's cpu_threads)")
    args = parser.parse_args()
    quiet_console()  # the table alone, not Lightning's messages for every timed run
    torch.set_num_threads(args.threads)
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    print(f"d={D} p={P} k={K} B=1 float32 device={args.device} threads={torch.get_num_threads()} load average={load}")
    print(
        f"{'R':>4} {'roofline':>9} {'(bound)':>8} {'plain':>9} {'compiled':>9} {'lightning':>9} "
        f"{'plain/roof':>10} {'compiled/roof':>13} {'lightning/roof':>14} {'step alone':>10} {'/step roof':>10}   [replica-steps/s]"
    )
    for R in args.replicas:
        roof = roofline(R, args.device)
        bound = min(("rng", "memory", "flops"), key=roof.get)
        probe = loop_rate(R, 2 * CHUNK, args.device, compiled=False)
        steps = max(4 * CHUNK, int(probe * args.seconds) // CHUNK * CHUNK)
        plain = R * loop_rate(R, steps, args.device, compiled=False)
        fast = R * loop_rate(R, 4 * steps, args.device, compiled=True)
        light = R * lightning_rate(R, 4 * steps, args.device, args.threads)
        alone = R * step_alone_rate(R, 4 * steps, args.device)
        r, step_roof = roof["roofline"], min(roof["memory"], roof["flops"])
        print(
            f"{R:>4} {r:>9.3g} {bound:>8} {plain:>9.3g} {fast:>9.3g} {light:>9.3g} {plain / r:>10.0%} {fast / r:>13.0%} {light / r:>14.0%}"
            f" {alone:>10.3g} {alone / step_roof:>10.0%}"
        )
        print(
            f"     one core: {roof['gaussians_per_s']:.3g} Gaussians/s, {roof['bytes_per_s'] / 1e9:.3g} GB/s on {R * P * D * 4 / 1e6:.3g} MB, "
            f"{roof['flops_per_s'] / 1e9:.3g} GFLOP/s; bounds rng {roof['rng']:.3g}, memory {roof['memory']:.3g}, flops {roof['flops']:.3g}"
        )


if __name__ == "__main__":
    main()
