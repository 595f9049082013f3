"""scripts/ode.py: the ODE alone from a drawn or a given initial condition."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from conftest import ROOT

from phasesgd.ode import solve_ode


def _run(tmp_path, name, *overrides):
    out = tmp_path / name
    cmd = [sys.executable, str(ROOT / "scripts" / "ode.py"), f"hydra.run.dir={out}", "t_max=10", *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_ode_script_from_a_file_equals_solve_ode(tmp_path):
    gen = np.random.default_rng(0)
    W, Ws = gen.standard_normal((8, 500)), np.linalg.qr(gen.standard_normal((500, 4)))[0].T * np.sqrt(500)
    W *= np.sqrt(500) / np.linalg.norm(W, axis=1, keepdims=True)
    np.savez(tmp_path / "init.npz", Q0=W @ W.T / 500, M0=W @ Ws.T / 500, P=Ws @ Ws.T / 500)
    out = _run(tmp_path, "file", f"init={tmp_path / 'init.npz'}", "teacher.noise=0.01")
    saved = np.load(out / "ode.npz")
    direct = solve_ode(W @ W.T / 500, W @ Ws.T / 500, Ws @ Ws.T / 500, gamma0=8.0, noise=0.01, t_eval=saved["t"])
    np.testing.assert_allclose(saved["risk"], direct.risk, rtol=1e-6)
    assert saved["t"][0] == 0 and saved["t"][-1] == 10 and (out / "risk.png").stat().st_size > 0


def test_ode_script_draws_an_initial_condition_and_refuses_the_no_ode_region(tmp_path):
    out = _run(tmp_path, "drawn", "replicas=2", "ode.mode=finite")
    saved = np.load(out / "ode.npz")
    assert saved["risk"].shape == (2, saved["t"].size) and saved["risk"][:, -1].max() < saved["risk"][:, 0].min()
    cmd = [sys.executable, str(ROOT / "scripts" / "ode.py"), f"hydra.run.dir={tmp_path / 'red'}", "lr.delta=-0.6"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "no deterministic limit" in proc.stderr
