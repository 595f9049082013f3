"""Sweeps and figure presets: a multirun resumed repeats no finished run, in-process sweeps
use the same folders as Hydra, every preset composes, and presets run end to end."""

from __future__ import annotations

import csv
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF, QUIET, ROOT
from hydra import compose, initialize_config_dir

from phasesgd.app.build import build_module
from phasesgd.experiments.diagram.preset import diagram_setup
from phasesgd.experiments.figures import reproduce
from phasesgd.experiments.presets import PRESETS
from phasesgd.experiments.sweeps import job_dir, load_sweep, sweep_jobs

TINY = ["d=20", "t_max=0.5", "replicas=2", *QUIET, "callbacks.ode=null", "callbacks.order_parameters=null"]


def multirun(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", f"hydra.sweep.dir={sweep_dir}", *TINY, *overrides]
    proc = subprocess.run(cmd, cwd=sweep_dir.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_an_interrupted_multirun_resumed_repeats_no_finished_run(tmp_path):
    sweep = tmp_path / "sweep"
    multirun(sweep, "lr.delta=0,0.25", "seed=1,2")
    jobs = sweep_jobs([*TINY, "lr.delta=0,0.25", "seed=1,2"])
    dirs = [job_dir(sweep, job) for job in jobs]
    assert len(dirs) == 4 and all((d / "results.npz").exists() for d in dirs)  # Hydra's folders are ours
    mtimes = {d: (d / "results.npz").stat().st_mtime_ns for d in dirs}
    (dirs[-1] / "summary.json").unlink()  # this point was cut short before it finished
    multirun(sweep, "lr.delta=0,0.25", "seed=1,2", "hydra/launcher=local")  # resumed, jobs in parallel (joblib)
    for d in dirs[:-1]:
        assert (d / "results.npz").stat().st_mtime_ns == mtimes[d], f"{d.name} ran again"
        assert "skipping" in (d / "train.log").read_text()
    assert (dirs[-1] / "results.npz").stat().st_mtime_ns != mtimes[dirs[-1]]
    rows = load_sweep(sweep)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert {(r["delta"], r["seed"]) for r in rows} == {(0.0, 1), (0.0, 2), (0.25, 1), (0.25, 2)}


def test_sweep_expansion_matches_hydra_and_the_command_line_wins():
    jobs = sweep_jobs(["experiment=blue_line_noise"])
    assert sorted(j for job in jobs for j in job if j.startswith("teacher.noise")) == [
        "teacher.noise=0",
        "teacher.noise=0.0001",
        "teacher.noise=0.001",
        "teacher.noise=0.01",
    ]
    assert len(sweep_jobs(["experiment=green_region"])) == 8
    jobs = sweep_jobs(["experiment=green_region", "d=30,100"])
    assert len(jobs) == 4 and {j for job in jobs for j in job if j.startswith("d=")} == {"d=30", "d=100"}


CURVE_PRESETS = [name for name, preset in PRESETS.items() if preset.kind == "curves"]
DIAGRAM_PRESETS = [name for name, preset in PRESETS.items() if preset.kind == "diagram"]


def _load(job):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*job, "output_dir=unused"])


@pytest.mark.parametrize("name", CURVE_PRESETS)
def test_every_figure_preset_and_its_quick_version_compose_instantiate_and_the_quick_one_is_smaller(name):
    assert (CONF / "experiment" / f"{name}.yaml").exists()
    preset = PRESETS[name]
    full, quick = sweep_jobs([f"experiment={name}"]), sweep_jobs([f"experiment={name}", *preset.quick])
    assert len(full) >= 3 and len(quick) >= 1
    size = lambda cfgs: (max(c.d for c in cfgs), max(c.t_max for c in cfgs), max(c.replicas for c in cfgs))  # noqa: E731
    full_cfgs, quick_cfgs = [_load(job) for job in full], [_load(job) for job in quick]
    assert all(q <= f for q, f in zip(size(quick_cfgs), size(full_cfgs)))
    assert size(quick_cfgs) != size(full_cfgs) or len(quick) < len(full)
    assert preset.curves in {k for job in full for k in (o.split("=")[0] for o in job)}
    for cfg in [*full_cfgs, *quick_cfgs]:
        build_module(cfg)  # instantiates: every job, full and quick, is a valid run


@pytest.mark.parametrize("name", DIAGRAM_PRESETS)
def test_every_diagram_preset_instantiates_and_its_grids_parse(name):
    build_module(_load([f"experiment={name}"]))
    for quick in (False, True):
        grid, setup = diagram_setup(name, quick)
        dims = grid.dimensions()
        assert len(dims) >= 4 and max(dims) >= 10 * min(dims)  # ≥ 4 values of d over ≥ 1 decade
        assert all(kappas and deltas for kappas, deltas in grid.rectangles())
        assert (setup.k, setup.p0, setup.gamma0, setup.noise, setup.activation) == (1, 1, 4.0, 1e-3, "erf")
    assert diagram_setup(name, True, ["replicas=2"])[1].replicas == 2


def test_a_diagram_cell_builds_the_networks_and_physics_of_the_same_train_py_run():
    """Setup.from_config: the cell (κ, δ, d) of the phase_diagram preset has the weights,
    width and physics that `train.py experiment=phase_diagram kappa=κ lr.delta=δ d=d` builds."""
    kappa, delta, d = Fraction(1, 4), Fraction(-1, 2), 81
    _, setup = diagram_setup("phase_diagram", True)
    teacher, student = setup.networks(kappa, d)
    cfg = _load(
        ["experiment=phase_diagram", f"kappa={float(kappa)}", f"lr.delta={float(delta)}", f"d={d}", "replicas=32"]
    )
    module = build_module(cfg)
    assert student.width == module.student.width == 3 and student.replicas == 32
    assert torch.equal(teacher.weight.float(), module.teacher.weight.cpu())
    assert torch.equal(student.weight.float(), module.student.weight.cpu())
    ours, theirs = setup.physics(kappa, delta, d), module.physics()
    for name in ("gamma0", "noise", "d", "delta", "kappa", "theta", "second_layer_lr", "weight_decay", "batch_size"):
        assert getattr(ours, name) == getattr(theirs, name), name


def test_the_diagram_presets_cover_the_issue_ranges():
    grid, _ = diagram_setup("phase_diagram", False)
    ((kappas, deltas),) = grid.rectangles()
    assert (min(kappas), max(kappas), min(deltas), max(deltas)) == (0, 1, Fraction(-5, 4), Fraction(1, 2))
    grid, _ = diagram_setup("no_ode_boundary", True)
    for kappa_list, delta_list in grid.rectangles():
        (kappa,) = kappa_list
        minus = [-x for x in delta_list]
        assert min(minus) < min(kappa + Fraction(1, 2), (kappa + 1) / 2) and max(minus) > max(
            kappa + Fraction(1, 2), (kappa + 1) / 2
        )


def test_slurm_launcher_config_is_documented_submitit():
    text = (CONF / "hydra" / "launcher" / "slurm.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert text.startswith("# @package hydra.launcher") and cfg["defaults"] == ["submitit_slurm"]
    assert {"timeout_min", "partition", "gpus_per_node", "cpus_per_task", "mem_gb"} <= set(cfg)


def test_a_preset_runs_end_to_end_and_redraws_without_running(tmp_path):
    """orange_region --quick (the cheapest preset: ν = t·d^(1/4) steps) cut to t_max = 30."""
    png = reproduce("orange_region", quick=True, sweep_dir=tmp_path, overrides=["t_max=30"])
    assert png == tmp_path / "orange_region.png" and png.stat().st_size > 20_000
    with open(tmp_path / "orange_region.csv") as f:
        rows = list(csv.DictReader(f))
    curves = {r["curve"] for r in rows}
    assert curves == {"d = 1000", "d = 1500", "d = 4000", "ODE (asymptotic)"}
    ode = [float(r["risk_ode"]) for r in rows if r["curve"] == "ODE (asymptotic)"]
    assert ode[-1] > 1.5 * ode[0]  # bad learning: the d → ∞ risk rises
    mtimes = [p.stat().st_mtime_ns for p in tmp_path.glob("*/results.npz")]
    reproduce("orange_region", quick=True, sweep_dir=tmp_path, overrides=["t_max=30"], run=False)
    assert [p.stat().st_mtime_ns for p in tmp_path.glob("*/results.npz")] == mtimes


@pytest.mark.slow
def test_reproduce_takes_options_after_overrides_and_prints_each_line_once(tmp_path):
    """`reproduce.py NAME --quick replicas=8` in that order, on a one-cell diagram (no ODE: a
    few SGD steps); every log line appears once."""
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "reproduce.py"),
        "phase_diagram",
        "--quick",
        "replicas=8",
        "diagram.quick.kappa=0",
        "diagram.quick.delta=-1",
        "diagram.quick.d='16,25,36,169'",
        "--sweep-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split(" ", 1)[1] for line in (proc.stdout + proc.stderr).splitlines() if line[:2].isdigit()]
    assert len(lines) == 5 and len(set(lines)) == len(lines), lines  # four traces and the final line, once each
    with open(tmp_path / "phase_diagram.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["d_values"] == "16;25;36;169" and row["replicas"] == "8" and row["regime_observed"] == "no_ode"
