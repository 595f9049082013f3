"""SGD steps per second: the Lightning run against plain PyTorch loops doing the same steps.

    python scripts/benchmark_sgd.py [--replicas 1 8 64] [--seconds 20] [--device cpu]

For each R it times, in one process and interleaved so machine noise hits all alike:
  lightning — the training loop of `phasesgd.run` with measurements and TensorBoard
              logging (the one-off ODE solve, checkpoint and plots before/after the loop
              are not timed);
  plain     — the same student.sgd_step on the same chunked, prefetched data, no Lightning;
  naive     — a textbook loop drawing x with torch.randn at every step.
The framework overhead is lightning/plain − 1 on the time per step.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from phasesgd.data import GaussianStream
from phasesgd.networks import CommitteeStudent, Teacher
from phasesgd.run import build_module, build_trainer

CONF = Path(__file__).resolve().parents[1] / "conf"
D, P, K = 1000, 8, 4


class _LoopTimer(L.Callback):
    """Wall time of the training loop alone: first chunk start to the end of training."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.start, self.first_step = time.perf_counter(), pl_module.sgd_steps

    def on_train_end(self, trainer, pl_module):
        self.rate = (pl_module.sgd_steps - self.first_step) / (time.perf_counter() - self.start)


def lightning_rate(replicas: int, steps: int, device: str) -> float:
    """Steps/s of the Lightning loop with measurements and TensorBoard logging on; the
    one-off work before and after the loop (ODE solve, checkpoint, plots) is not timed."""
    with TemporaryDirectory() as out, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"output_dir={out}", f"replicas={replicas}", f"t_max={steps / D}",
                                           f"trainer.accelerator={device}", "trainer.enable_progress_bar=false",
                                           "callbacks.progress=null", "callbacks.ode=null", "callbacks.checkpoint=null"])
        module, trainer = build_module(cfg), build_trainer(cfg)
        timer = _LoopTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module)
        return timer.rate


def plain_rate(replicas: int, steps: int, device: str, chunk: int = 512) -> float:
    teacher = Teacher(width=K, dim=D, noise=1e-3).to(device)
    student = CommitteeStudent(width=P, dim=D, replicas=replicas).to(device)
    stream = GaussianStream(chunk_steps=chunk)
    stream.bind(D, 0, range(replicas), torch.device(device), torch.float32)
    start, done = time.perf_counter(), 0
    with torch.no_grad():
        while done < steps:
            batch = stream.draw(chunk, next_steps=chunk)
            labels = teacher.labels(batch.inputs, batch.label_noise)
            for s in range(chunk):
                student.sgd_step(batch.inputs[s], labels[s], 8.0)
            done += chunk
    if device == "cuda":
        torch.cuda.synchronize()
    stream.close()
    return done / (time.perf_counter() - start)


def naive_rate(replicas: int, steps: int, device: str) -> float:
    w_star = torch.randn(K, D, device=device)
    w = torch.randn(replicas, P, D, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            x = torch.randn(replicas, D, device=device)
            y = torch.erf(x @ w_star.T / math.sqrt(2 * D)).mean(-1)
            lam = torch.einsum("rjd,rd->rj", w, x) / math.sqrt(D)
            err = y - torch.erf(lam / math.sqrt(2)).mean(-1)
            coeff = (8.0 / P) * err[:, None] * math.sqrt(2 / math.pi) * torch.exp(-lam**2 / 2)
            w += coeff[:, :, None] * x[:, None, :] / math.sqrt(D)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="rough time per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the config's cpu_threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"d={D} p={P} k={K} device={args.device} threads={torch.get_num_threads()}")
    print(f"{'R':>4} {'lightning steps/s':>18} {'plain steps/s':>14} {'naive steps/s':>14} {'overhead':>9} {'replica-steps/s':>16}")
    for R in args.replicas:
        probe = plain_rate(R, 2048, args.device)
        steps = max(4096, int(probe * args.seconds))
        plain = plain_rate(R, steps, args.device)
        light = lightning_rate(R, steps, args.device)
        naive = naive_rate(R, max(1000, steps // 4), args.device)
        print(f"{R:>4} {light:>18.0f} {plain:>14.0f} {naive:>14.0f} {plain / light - 1:>8.1%} {R * light:>16.0f}")


if __name__ == "__main__":
    main()
