"""A run's identity is its physics: moving a module or adding a neutral key changes nothing,
and a run written by release d319da6 (tests/fixtures/release_d319da6: d = 40, 2 replicas,
t_max = 5, before the package was split into layers) is still finished, resumable and
re-solvable."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import yaml
from conftest import QUIET, ROOT
from omegaconf import OmegaConf

from phasesgd.app.train import train
from phasesgd.ode import SolverOptions, solve_ode
from phasesgd.theory import identity as ids
from phasesgd.theory.order_parameters import Overlaps
from phasesgd.theory.physics import RunPhysics
from phasesgd.training.summary import is_finished

FIXTURE = ROOT / "tests" / "fixtures" / "release_d319da6"
# The fixture's physics as overrides of today's config.
FIXTURE_RUN = ["d=40", "replicas=2", "t_max=5"]


def _stored_config() -> dict:
    return yaml.safe_load((FIXTURE / "config.yaml").read_text())


def _copy(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(FIXTURE, folder)
    return folder


def _resolved(make_config, *overrides, output_dir):
    return OmegaConf.to_container(make_config(*overrides, output_dir=output_dir), resolve=True)


def test_the_record_names_classes_not_module_paths(make_config, tmp_path):
    today = _resolved(make_config, *FIXTURE_RUN, output_dir=tmp_path)
    stored = _stored_config()
    assert stored["student"]["_target_"] == "phasesgd.networks.CommitteeStudent"  # the old path
    assert ids.physics_record(stored)["student._target_"] == "CommitteeStudent"
    assert ids.physics_record(stored) == ids.physics_record(today)
    assert ids.identity(stored) == ids.identity(today)


def test_a_change_of_physics_changes_the_identity(make_config, tmp_path):
    """Negative control: the comparison that accepts the old run rejects other physics."""
    stored = _stored_config()
    for change in ("lr.gamma0=4", "seed=1", "student.init=orthonormal", "data.chunk_steps=256", "d=41"):
        other = _resolved(make_config, *FIXTURE_RUN, change, output_dir=tmp_path)
        assert ids.identity(other) != ids.identity(stored), change
        assert ids.physics_differences(stored, other), change


def test_a_new_key_at_its_neutral_default_leaves_the_identity(monkeypatch, make_config, tmp_path):
    today = _resolved(make_config, *FIXTURE_RUN, output_dir=tmp_path)
    with_key = today | {"engine": "sgd"}
    assert ids.identity(with_key) != ids.identity(today)
    monkeypatch.setitem(ids.NEUTRAL_DEFAULTS, "engine", "sgd")
    assert ids.identity(with_key) == ids.identity(today)
    assert ids.identity(today | {"engine": "chain"}) != ids.identity(today)


def test_the_length_is_not_physics_for_a_resume(make_config, tmp_path):
    stored = _stored_config()
    longer = _resolved(make_config, "d=40", "replicas=2", "t_max=50", output_dir=tmp_path)
    assert ids.physics_differences(stored, longer) == []
    assert ids.identity(stored) != ids.identity(longer)


def test_the_release_run_is_skipped_as_finished(make_config, tmp_path):
    folder = _copy(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    requested = _resolved(make_config, *FIXTURE_RUN, output_dir=folder)
    assert is_finished(folder, requested)
    assert not is_finished(folder, _resolved(make_config, "d=40", "replicas=2", "t_max=5", "seed=1", output_dir=folder))
    assert train(make_config(*QUIET, *FIXTURE_RUN, output_dir=folder)) is None
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_the_release_run_resumes_bit_for_bit(make_config, tmp_path):
    """Started again in its folder with t_max = 8, the release's run continues from its
    checkpoint exactly as the release itself continued it (extended_to_t8.npz, written by
    d319da6 from the same folder): the same measurement times, and the same risks and final
    overlaps to float32 rounding. They are bit for bit equal on a CPU like the release's; another
    CPU's vector units round the float32 sums of the weights differently (8e-8 relative seen).
    Bit-exact resume on one machine is tested in test_training.py."""
    folder = _copy(tmp_path)
    quiet = [*QUIET, "callbacks.order_parameters=null", "callbacks.ode=null"]
    module = train(make_config(*quiet, "d=40", "replicas=2", "t_max=8", output_dir=folder))
    expected = np.load(FIXTURE / "extended_to_t8.npz")
    stored = np.load(FIXTURE / "results.npz")
    assert module is not None and expected["t"].size > stored["t"].size
    np.testing.assert_array_equal(np.asarray(module.history.steps), expected["steps"])
    np.testing.assert_allclose(np.stack(module.history.risk, 1), expected["risk"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(module.history.Q[-1], expected["Q"], rtol=0, atol=1e-6)  # order-one entries
    np.testing.assert_allclose(module.history.M[-1], expected["M"], rtol=0, atol=1e-6)


def test_the_release_run_is_re_solved(tmp_path):
    """Its stored results.npz gives back its physics (schedule included) and its ODE."""
    stored = np.load(FIXTURE / "results.npz")
    physics = RunPhysics.from_results(stored)
    assert (physics.gamma0, physics.d, physics.noise) == (8.0, 40, 0.001)
    start = Overlaps(stored["Q0"], stored["M0"], stored["P"], stored["a0"])
    sol = solve_ode(start, physics, stored["t"], mode="finite", solver=SolverOptions(method="auto"))
    np.testing.assert_allclose(sol.risk, stored["risk_ode"], rtol=1e-5)


def test_ode_script_re_solves_the_release_run(tmp_path):
    out = tmp_path / "ode"
    cmd = [sys.executable, str(ROOT / "scripts" / "ode.py"), f"init={FIXTURE / 'results.npz'}", "d=40", "t_max=5"]
    proc = subprocess.run(
        [*cmd, "ode.mode=finite", f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stored = np.load(FIXTURE / "results.npz")
    solved = np.load(out / "ode.npz")
    np.testing.assert_allclose(solved["risk"], stored["risk_ode"], rtol=1e-5)
