"""scripts/ode.py: the ODE alone from a drawn or a given initial condition."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from problems import solve


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
    direct = solve(W @ W.T / 500, W @ Ws.T / 500, Ws @ Ws.T / 500, gamma0=8.0, noise=0.01, t_eval=saved["t"])
    np.testing.assert_allclose(saved["risk"], direct.risk, rtol=1e-6)
    assert saved["t"][0] == 0 and saved["t"][-1] == 10 and (out / "risk.png").stat().st_size > 0


def test_ode_script_draws_an_initial_condition_and_refuses_the_no_ode_region(tmp_path):
    out = _run(tmp_path, "drawn", "replicas=2", "ode.mode=finite")
    saved = np.load(out / "ode.npz")
    assert saved["risk"].shape == (2, saved["t"].size) and saved["risk"][:, -1].max() < saved["risk"][:, 0].min()
    cmd = [sys.executable, str(ROOT / "scripts" / "ode.py"), f"hydra.run.dir={tmp_path / 'red'}", "lr.delta=-0.6"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "no deterministic limit" in proc.stderr


@pytest.mark.slow
def test_init_files_are_checked_for_keys_shapes_and_the_config(tmp_path):
    """A file without M0 is refused naming the key (not a bare KeyError); a file of another p is refused, not used."""
    p8 = np.eye(8)
    np.savez(tmp_path / "no_m0.npz", Q0=p8, P=np.eye(4))
    np.savez(tmp_path / "p6.npz", Q0=np.eye(6), M0=np.zeros((6, 4)), P=np.eye(4))
    cases = [
        ("no_m0.npz", "init: .*no_m0.npz lacks M0"),
        ("p6.npz", r"init: Q0 has shape \(6, 6\), but the config's student width is p=8"),
    ]
    for name, message in cases:
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / "ode.py"),
            f"hydra.run.dir={tmp_path / (name + '.out')}",
            "t_max=1",
            f"init={tmp_path / name}",
        ]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and re.search(message, errors[0]), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / (name + ".out") / "ode.npz").exists()
