"""The benchmark scripts' writer of docs/benchmarks.md: each script replaces its own section
(between ``<!-- name: begin -->`` and ``<!-- name: end -->``) and leaves the others alone.

The scripts run for real at their ``--quick`` sizes (short timings, nothing compiled), into a
temporary file, never into docs/benchmarks.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A module of scripts/ by its file, registered under its name (dataclasses need that)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc():
    from phasesgd.infra import report

    return report


def _mark(text: str, name: str) -> str:
    """A line put into section ``name``, which a rewrite of that section must remove."""
    return text.replace(f"<!-- {name}: end -->", f"stale line of {name}\n<!-- {name}: end -->")


def test_each_script_replaces_its_section_and_keeps_the_other(tmp_path, doc):
    out = tmp_path / "benchmarks.md"
    _script("benchmark_ode").main(["--quick", "--markdown", "--output", str(out)])
    assert out.read_text().startswith(doc.HEADER)
    ode = doc.read_sections(out)["benchmark_ode"]
    for expected in (
        "- date:",
        "- revision:",
        "- machine:",
        "load average",
        "benchmark_ode.py --quick",
        "| current / dense |",
    ):
        assert expected in ode

    out.write_text(_mark(out.read_text(), "benchmark_ode"))
    _script("benchmark_sgd").main(["--quick", "--replicas", "1", "--markdown", "--output", str(out)])
    sections = doc.read_sections(out)
    assert list(sections) == ["benchmark_sgd", "benchmark_ode"]  # the file's order, whichever ran first
    assert "stale line of benchmark_ode" in sections["benchmark_ode"]  # the other script's section, untouched
    sgd = sections["benchmark_sgd"]
    assert "| R | roofline | bound |" in sgd and "| 1 |" in sgd and "Gaussians/s" in sgd
    assert "| p | k | d | R | SGD | SGD roofline | SGD / roof | chain | chain (Chain engine) |" in sgd  # both engines
    assert "| 8 | 4 | 60 | 1 |" in sgd and "| 128 | 1 | 300 | 4 |" in sgd  # the --quick cells, the wide one too
    assert "chain rate spread over d" in sgd and "chain / SGD at p=128, k=1" in sgd  # a line per target
    assert "normals/s (f64)" in sgd

    out.write_text(_mark(out.read_text(), "benchmark_sgd"))
    _script("benchmark_ode").main(
        ["--quick", "--skip-lines", "--markdown", "--output", str(out)]
    )  # the drift table only
    text = out.read_text()
    assert "stale line of benchmark_ode" not in text and "(1) blue line" not in text  # its own section: replaced
    assert "stale line of benchmark_sgd" in text  # the other: kept
    assert text.count("<!-- benchmark_ode: begin -->") == 1 and text.count("<!-- benchmark_sgd: begin -->") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["benchmarks.md"]  # no temporary left behind


def test_write_section_keeps_unknown_sections_and_drops_loose_text(tmp_path, doc):
    out = tmp_path / "b.md"
    out.write_text("old header\n<!-- other: begin -->\nkept\n<!-- other: end -->\nloose text\n")
    info = doc.RunInfo("benchmark_ode", ["--quick"], "today", "abc123", "0.00 / 0.00 / 0.00")
    doc.write_section(out, "benchmark_ode", doc.section("benchmark_ode", "ODE", info, "| a |"))
    text = out.read_text()
    assert text.startswith(doc.HEADER) and "old header" not in text and "loose text" not in text
    assert list(doc.read_sections(out)) == ["benchmark_ode", "other"]
    assert "`python scripts/benchmark_ode.py --quick`" in text
    with pytest.raises(ValueError, match="unknown section"):
        doc.section("nonsense", "x", info, "")


def test_gpu_check_section_from_a_report(tmp_path, doc):
    """gpu_check's section (written on CUDA machines only) from a report of its shape."""
    gpu_check = _script("gpu_check")
    report = {
        "device": "Some GPU", "sizes": {"d": 1000, "steps": 20_000},
        "throughput": [
            {"replicas": 64, "replica_steps_per_s": 1e6, "roofline_replica_steps_per_s": 4e6, "bound": "rng"},
        ],
        "target_replica_steps_per_s": 2e7, "target_met": False,
        "determinism": {"ok": True}, "replica_alone": {"replica": 3, "max_relative_difference": 1e-12, "ok": True},
        "ode_drift": [{"p": 8, "evals_per_s": 900.0, "peak_memory_gib": 0.01}],
    }  # fmt: skip
    body = gpu_check.markdown(report)
    assert "| 64 | 1e+06 | 4e+06 | rng | 25.0% |" in body and "NOT met" in body
    out = tmp_path / "b.md"
    info = doc.RunInfo("gpu_check", ["--markdown"], "today", "abc123", "?")
    doc.write_section(out, "benchmark_sgd", doc.section("benchmark_sgd", "SGD", info, "sgd table"))
    doc.write_section(out, "gpu_check", doc.section("gpu_check", "GPU", info, body))
    assert list(doc.read_sections(out)) == ["benchmark_sgd", "gpu_check"]
    with pytest.raises(SystemExit):  # toy CPU sizes never go to docs/benchmarks.md by default
        gpu_check.main(["--device", "cpu", "--markdown"])
