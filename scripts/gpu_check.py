"""Check a CUDA machine in one command: SGD throughput, determinism, replica independence, ODE drift speed.

    python scripts/gpu_check.py                 # on a CUDA machine; without CUDA: says so, exits 0
    python scripts/gpu_check.py --device cpu    # the same checks at tiny sizes on the CPU
    python scripts/gpu_check.py --markdown      # on CUDA: also rewrites its section of docs/benchmarks.md

On CUDA (d = 1000, p = 8, k = 4, erf, float32 unless said):
  1. throughput — the training loop of `scripts/train.py` (phasesgd.app.train: the module and
     Lightning trainer, measurements on, TensorBoard and the ODE prediction off) at
     R = 64, 1024, 4096 replicas, in replica-steps/s over the second half of the run (the
     SGD blocks compile into a CUDA graph in the first); target ≥ 2·10⁷ at R = 4096;
  2. determinism — two runs with the same seed give bitwise identical weights and risks;
  3. replica independence — replica 3 of an R = 8 run equals the same replica run alone
     (R = 1, replica_offset = 3), in float64: equal up to the order of sums inside
     batched kernels (≤ 1e-9 relative);
  4. ODE drift — evaluations/s of the asymptotic drift at p = 8 … 256.
Writes gpu_check.json (--out) and exits 1 if check 2 or 3 fails. With --markdown it also
writes its section of docs/benchmarks.md (--output; the writer is scripts/benchmark_ode.py's):
throughput against the roofline of scripts/benchmark_sgd.py measured on the device in this
run, and against the target. The CPU mode writes a section only to an explicit --output, so
that toy sizes never stand in the document for a GPU's numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from phasesgd.app.build import build_module, build_trainer
from phasesgd.infra import report as doc
from phasesgd.infra.console import quiet_console
from phasesgd.infra.io import write_text

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"  # the configs of this checkout, beside this script
TARGET_REPLICA_STEPS = 2e7  # at R = 4096 on one H100/H200-class GPU

SIZES = {  # device → run sizes; the CPU mode runs the same code at toy sizes
    "cuda": dict(
        d=1000,
        replicas=(64, 1024, 4096),
        steps=20_000,
        check_steps=4_000,
        drift_p=(8, 16, 32, 64, 128, 256),
        roofline_s=0.5,
    ),
    "cpu": dict(d=50, replicas=(2, 4), steps=1_024, check_steps=200, drift_p=(8,), roofline_s=0.02),
}


def _script(name: str):
    """A module of scripts/ (not a package) by its file, registered (as dataclasses need):
    benchmark_sgd's timer and roofline, benchmark_ode's drift_rate and markdown writer."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def run(device: str, d: int, steps: int, *overrides: str, timer: L.Callback | None = None):
    """One run of train.py's module and trainer (no TensorBoard, ODE, checkpoint or plots)."""
    accelerator = "gpu" if device == "cuda" else "cpu"
    with TemporaryDirectory() as out, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"output_dir={out}", f"d={d}", f"t_max={steps / d}", f"trainer.accelerator={accelerator}",
            "trainer.enable_progress_bar=false", "~logger", "callbacks.progress=null", "callbacks.ode=null",
            "callbacks.checkpoint=null", "callbacks.results=null", *overrides,
        ])  # fmt: skip
        module, trainer = build_module(cfg), build_trainer(cfg)
        if timer is not None:
            trainer.callbacks.append(timer)
        trainer.fit(module)
        return module


def throughput(device: str, sizes: dict) -> list[dict]:
    """Replica-steps/s of the training loop at each R, each against the roofline of
    scripts/benchmark_sgd.py (RNG, memory, flops) measured on the device just before it."""
    bench = _script("benchmark_sgd")
    rows = []
    for replicas in sizes["replicas"]:
        roof = bench.roofline(replicas, device, min_seconds=sizes["roofline_s"], dim=sizes["d"])
        bound = min(("rng", "memory", "flops"), key=roof.get)
        timer = bench.LoopTimer()  # steps/s over the second half of a run
        run(device, sizes["d"], sizes["steps"], f"replicas={replicas}", timer=timer)
        rate = replicas * timer.rate
        rows.append({
            "replicas": replicas, "d": sizes["d"], "p": 8, "k": 4, "replica_steps_per_s": rate,
            "roofline_replica_steps_per_s": roof["roofline"], "bound": bound,
        })  # fmt: skip
        print(f"  R={replicas:5d}: {rate:.3g} replica-steps/s, {rate / roof['roofline']:.1%} of the roofline ({bound})")
    return rows


def determinism(device: str, sizes: dict) -> dict:
    replicas = "replicas=64" if device == "cuda" else "replicas=2"
    a, b = (run(device, sizes["d"], sizes["check_steps"], replicas, "seed=5") for _ in range(2))
    same_weights = torch.equal(a.student.weight, b.student.weight)
    same_risk = all(np.array_equal(x, y) for x, y in zip(a.history.risk, b.history.risk))
    moved = not torch.equal(a.student.weight, build_module_weight(a))
    ok = same_weights and same_risk and moved
    result = {"identical_weights": same_weights, "identical_risk": same_risk, "weights_moved": moved, "ok": ok}
    print(
        f"  same seed twice: weights {'identical' if same_weights else 'DIFFER'}, "
        f"risk {'identical' if same_risk else 'DIFFERS'}"
    )
    return result


def build_module_weight(module) -> torch.Tensor:
    """The initial weights of ``module``'s student (drawn again from its seed)."""
    student = type(module.student)(
        width=module.student.width, dim=module.dim, replicas=module.student.replicas, seed=module.seed,
        replica_offset=module.student.replica_offset, dtype=module.student.weight.dtype,
    )  # fmt: skip
    return student.weight.to(module.student.weight.device)


def replica_alone(device: str, sizes: dict, replica: int = 3, tolerance: float = 1e-9) -> dict:
    common = ("seed=7", "dtype=float64")
    batch = run(device, sizes["d"], sizes["check_steps"], "replicas=8", *common)
    alone = run(device, sizes["d"], sizes["check_steps"], "replicas=1", f"replica_offset={replica}", *common)
    w_batch, w_alone = batch.student.weight[replica], alone.student.weight[0]
    diff = float((w_batch - w_alone).abs().max() / w_alone.abs().max())
    bitwise, ok = bool(torch.equal(w_batch, w_alone)), diff <= tolerance
    result = {"replica": replica, "bitwise": bitwise, "max_relative_difference": diff, "ok": ok}
    verdict = f"{'ok' if ok else 'FAIL'} at {tolerance:g}"
    print(f"  replica {replica} of 8 vs alone: max relative difference {diff:.3g} ({verdict})")
    return result


def drift_timing(device: str, sizes: dict) -> list[dict]:
    """Evaluations/s of the asymptotic blue-line drift, by scripts/benchmark_ode.py's drift_rate."""
    bench = _script("benchmark_ode")
    rows = []
    for p in sizes["drift_p"]:
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rate = bench.drift_rate(p, device=device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else float("nan")
        rows.append({"p": p, "evals_per_s": rate, "peak_memory_gib": None if np.isnan(peak) else peak})
        print(f"  drift p={p:4d}: {rate:.3g} evaluations/s", flush=True)
    return rows


def markdown(report: dict) -> str:
    """The body of gpu_check's section of docs/benchmarks.md, from a report of :func:`main`."""
    rows = [
        [
            str(r["replicas"]),
            f"{r['replica_steps_per_s']:.3g}",
            f"{r['roofline_replica_steps_per_s']:.3g}",
            r["bound"],
            f"{r['replica_steps_per_s'] / r['roofline_replica_steps_per_s']:.1%}",
        ]
        for r in report["throughput"]
    ]
    target = report["target_replica_steps_per_s"]
    largest = report["throughput"][-1]
    verdict = "no target (CPU mode)"
    if target:
        met = "met" if report["target_met"] else "NOT met"
        share = largest["replica_steps_per_s"] / target
        verdict = f"target {target:.3g} at R = {largest['replicas']}: {share:.2f} of it ({met})"
    drift = [
        [str(r["p"]), f"{r['evals_per_s']:.3g}", "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.3g}"]
        for r in report["ode_drift"]
    ]
    det, alone = report["determinism"], report["replica_alone"]
    sizes = report["sizes"]
    return "\n".join(
        [
            f"### SGD throughput on {report['device']} (d={sizes['d']}, p=8, k=4, float32, {sizes['steps']} steps)",
            "",
            doc.markdown_table(["R", "replica-steps/s", "roofline", "bound", "of the roofline"], rows),
            "",
            f"- {verdict}",
            "- the training loop of scripts/train.py over the second half of each run; roofline: that of "
            "scripts/benchmark_sgd.py (RNG, memory, flops), measured on this device just before each run",
            "",
            "### Checks",
            "",
            f"- determinism (same seed twice): {'ok' if det['ok'] else 'FAILED'}",
            f"- replica {alone['replica']} of 8 against the replica alone (float64): max relative difference "
            f"{alone['max_relative_difference']:.3g} ({'ok' if alone['ok'] else 'FAILED'})",
            "",
            "### ODE drift (asymptotic blue line, k=4, erf, float64, one state)",
            "",
            doc.markdown_table(["p", "evaluations/s", "peak memory [GiB]"], drift),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the same checks at toy sizes")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report")
    parser.add_argument("--markdown", action="store_true", help="also write this run's section of --output")
    parser.add_argument("--output", default=None, help="the markdown file of --markdown (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.markdown and args.device == "cpu" and args.output is None:
        parser.error("--markdown --device cpu: toy sizes go only to an explicit --output, not to docs/benchmarks.md")
    quiet_console()  # one line per result, not Lightning's per run
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (use --device cpu to exercise the checks on the CPU)")
        return 0
    info = doc.RunInfo.start("gpu_check", argv)
    sizes = SIZES[args.device]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"gpu_check on {name} (torch {torch.__version__}); load average {info.load_start}")
    listed = {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}
    report = {"device": name, "torch": torch.__version__, "sizes": listed}
    print("1. SGD throughput (training loop)")
    report["throughput"] = throughput(args.device, sizes)
    largest = report["throughput"][-1]
    report["target_replica_steps_per_s"] = TARGET_REPLICA_STEPS if args.device == "cuda" else None
    report["target_met"] = largest["replica_steps_per_s"] >= TARGET_REPLICA_STEPS if args.device == "cuda" else None
    print("2. determinism")
    report["determinism"] = determinism(args.device, sizes)
    print("3. a replica in a batch equals the replica alone")
    report["replica_alone"] = replica_alone(args.device, sizes)
    print("4. ODE drift")
    report["ode_drift"] = drift_timing(args.device, sizes)
    report["passed"] = report["determinism"]["ok"] and report["replica_alone"]["ok"]
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"{'passed' if report['passed'] else 'FAILED'}; {args.out}; load average at the end {doc.load_average()}")
    if args.markdown:
        output = doc.DOC if args.output is None else args.output
        device = f", {name}" if args.device == "cuda" else ""
        doc.write_section(
            output,
            "gpu_check",
            doc.section("gpu_check", "GPU check (`scripts/gpu_check.py`)", info, markdown(report), device),
        )
        print(f"wrote the gpu_check section of {output}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
