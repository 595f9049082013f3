"""A 2-point sweep through hydra/launcher=slurm (submitit) on a real SLURM cluster.

Uses the cluster that is running (scontrol ping), or starts the local one with
scripts/local_slurm.sh (root on Debian); skips where neither is possible.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _running() -> bool:
    return (
        shutil.which("scontrol") is not None
        and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    if _running():
        return
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        pytest.skip("no SLURM cluster running, and scripts/local_slurm.sh needs root on Debian")
    started = subprocess.run(
        ["bash", str(ROOT / "scripts/local_slurm.sh"), "start"], capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0 or not _running():
        pytest.skip(f"the local SLURM cluster could not be started: {started.stdout[-500:]}{started.stderr[-500:]}")


def _accounted_states(job_ids: list[str], seconds: float = 60) -> dict[str, str]:
    """sacct's state of each job, once every job has a final one (slurmdbd records
    a job's end a moment after it ends)."""
    states: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-a", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
        ).stdout
        states = dict(line.split("|", 1) for line in out.split() if "|" in line)
        if len(states) == len(job_ids) and all(s not in ("PENDING", "RUNNING", "COMPLETING") for s in states.values()):
            break
        time.sleep(2)
    return states


def test_two_point_sweep_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "scripts/train.py",
        "-m",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.partition=debug",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=20",
        "d=40",
        "t_max=2",
        "replicas=2",
        "trainer.accelerator=cpu",
        "teacher.noise=0.001,0.01",
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT)}  # the jobs import this checkout's phasesgd
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = sorted(sweep.glob("*/results.npz"))
    assert (
        len(results) == 2
        and ["teacher.noise=0.001" in results[0].parent.name, "teacher.noise=0.01" in results[1].parent.name]
        == [True] * 2
    )
    job_ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(job_ids) == 2, job_ids  # one SLURM array task per grid point
    states = _accounted_states(job_ids)
    assert sorted(states) == job_ids and set(states.values()) == {"COMPLETED"}, states
