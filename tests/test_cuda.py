"""The CUDA path: compiled, graph-captured SGD blocks against the CPU step loop, determinism;
and scripts/gpu_check.py's CPU mode and its answer where no CUDA device is present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from phasesgd.sgd.compiled import CompilePolicy
from phasesgd.sgd.loop import sgd_chunk
from phasesgd.sgd.networks import CommitteeStudent

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def needs_cuda(test):
    """Marked `cuda`; skipped where torch sees no CUDA device."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(steps=40, replicas=3, batch=1, d=60):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, replicas, batch, d, generator=gen, dtype=torch.float64)
    y = torch.randn(steps, replicas, batch, generator=gen, dtype=torch.float64)
    return x, y, torch.linspace(1.0, 4.0, steps, dtype=torch.float64)


def _student(device):
    return CommitteeStudent(width=5, dim=60, replicas=3, seed=2, dtype="float64", weight_decay=0.1).to(device)


@needs_cuda
def test_cuda_chunk_equals_the_cpu_step_loop():
    """Same inputs; CUDA: compiled blocks replayed as CUDA graphs; CPU: sgd_step per step."""
    x, y, rates = _data()
    gpu, cpu = _student("cuda"), _student("cpu")
    policy = CompilePolicy()
    assert policy.applies(gpu)  # automatic on CUDA
    with torch.no_grad():
        errors = sgd_chunk(gpu, x.to(CUDA), y.to(CUDA), rates, policy)
        expected = torch.stack([cpu.sgd_step(x[s], y[s], float(rates[s])) for s in range(len(rates))])
    torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(errors.cpu(), expected, rtol=1e-10, atol=1e-10)


@needs_cuda
def test_cuda_chunks_are_deterministic():
    x, y, rates = _data()
    a, b = _student("cuda"), _student("cuda")
    with torch.no_grad():
        sgd_chunk(a, x.to(CUDA), y.to(CUDA), rates, CompilePolicy())
        sgd_chunk(b, x.to(CUDA), y.to(CUDA), rates, CompilePolicy())
    assert torch.equal(a.weight, b.weight)


@needs_cuda
@pytest.mark.slow
def test_cuda_runs_with_one_seed_are_identical():
    gpu_check = _gpu_check()
    a, b = (gpu_check.run("cuda", 100, 2000, "replicas=4", "seed=3") for _ in range(2))
    assert torch.equal(a.student.weight, b.student.weight)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path, capsys):
    assert _gpu_check().main(["--out", str(tmp_path / "gpu_check.json")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_every_check(tmp_path):
    """The script's own code at toy sizes on the CPU: all four sections, and checks that pass."""
    out = tmp_path / "gpu_check.json"
    assert _gpu_check().main(["--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["replicas"] for row in report["throughput"]] == [2, 4]
    assert all(row["replica_steps_per_s"] > 0 for row in report["throughput"])
    assert report["determinism"]["ok"] and report["determinism"]["weights_moved"]
    assert report["replica_alone"]["max_relative_difference"] <= 1e-9
    assert report["ode_drift"][0]["p"] == 8 and report["ode_drift"][0]["evals_per_s"] > 0
    assert report["passed"]
