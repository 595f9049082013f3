"""What a run leaves in TensorBoard (read back from the event files), the ODE prediction's
budget and status, and risk.png's title."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from conftest import CONF, QUIET
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import phasesgd.training.callbacks.ode_prediction as ode_prediction
import phasesgd.training.callbacks.results as results_module
from phasesgd.app.train import train
from phasesgd.training.callbacks.tensorboard import frame_indices, log_time_step, overlap_scalars
from phasesgd.viz.plotting import alignment_order

# The blue line of the default experiment, small: t = ν/d, ν_max = 1000, 2 replicas.
RUN = ["d=1000", "t_max=1", "replicas=2", "callbacks.progress=null", "trainer.enable_progress_bar=false"]
PHYSICS_KEYS = {
    "activation",
    "d",
    "delta",
    "gamma0",
    "k",
    "kappa",
    "noise",
    "p",
    "prefactor_drift",
    "prefactor_noise",
    "region",
    "tau",
    "theta",
}


def compose_run(output_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"output_dir={output_dir}", *overrides])


def events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalar(acc: EventAccumulator, tag: str) -> tuple[np.ndarray, np.ndarray]:
    rows = acc.Scalars(tag)
    return np.array([e.step for e in rows]), np.array([e.value for e in rows])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One small default run with TensorBoard on; records the title risk.png was drawn with."""
    out = tmp_path_factory.mktemp("run")
    titles = []
    plot_risk = results_module.plot_risk

    def recording_plot_risk(*args, **kwargs):
        titles.append(kwargs["title"])
        plot_risk(*args, **kwargs)

    results_module.plot_risk = recording_plot_risk
    try:
        module = train(compose_run(out, *RUN))
    finally:
        results_module.plot_risk = plot_risk
    return module, out, np.load(out / "results.npz"), titles


def test_log_time_mapping():
    assert log_time_step(0.0, 0.01) == 0
    assert log_time_step(0.01, 0.01) == 1000
    assert log_time_step(1.0, 0.01) == 3000
    assert log_time_step(100.0, 0.01) == 5000


def test_scalars_on_log_time_are_evenly_spaced_and_match_the_sgd_step(run):
    module, out, results, _ = run
    sim = events(out / "tensorboard" / "simulation")
    log_steps, t_values = scalar(sim, "6_time/t")
    steps, t_by_step = scalar(sim, "sgd_step/time/t")
    t = results["t"]
    np.testing.assert_allclose(t_values, t, rtol=1e-6)
    np.testing.assert_allclose(t_by_step, steps / 1000.0, rtol=1e-6)  # t = ν/d on the blue line
    assert log_steps[0] == 0 and log_steps[1] == 1000  # t = 0, then t_min = 0.01
    # 10 measurements per decade → 100 log-time steps apart; ν = round(t d) rounds the
    # first few times (ν = 10, 13, 16, …) by up to half a step.
    gaps = np.diff(log_steps[1:])
    assert np.all(np.abs(gaps - 100) <= 25), gaps
    assert np.all(np.abs(gaps[-10:] - 100) <= 2), gaps
    # The risk against log time equals the risk against the step, point by point.
    _, risk_log = scalar(sim, "1_risk/mean")
    _, risk_step = scalar(sim, "sgd_step/risk/mean")
    np.testing.assert_allclose(risk_log, results["risk"].mean(0), rtol=1e-6)
    np.testing.assert_allclose(risk_step, risk_log)


def test_risk_sorts_first_and_the_ode_run_logs_the_same_tags(run):
    _, out, _, _ = run
    sim, ode = events(out / "tensorboard" / "simulation"), events(out / "tensorboard" / "ode")
    tags = sim.Tags()["scalars"]
    assert sorted(tags, key=str.lower)[0].startswith("1_risk/") and sorted(tags)[0].startswith("1_risk/")
    expected = {
        t for t in tags if not any(g in t for g in ("lr/", "time/", "hp/"))
    }  # the ODE run has no lr, t, hparams
    assert expected <= set(ode.Tags()["scalars"])
    # the ODE from the replicas' own initial overlaps starts where they are
    _, sim_risk = scalar(sim, "1_risk/mean")
    _, ode_risk = scalar(ode, "1_risk/mean")
    assert ode_risk[0] == pytest.approx(sim_risk[0], rel=1e-5)


def test_specialisation_scalars_match_the_final_overlaps(run):
    _, out, results, _ = run
    sim = events(out / "tensorboard" / "simulation")
    M, Q = results["M"], results["Q"]  # (R, p, k), (R, p, p)
    for r in range(M.shape[2]):
        _, value = scalar(sim, f"2_specialisation/teacher_{r}")
        assert value[-1] == pytest.approx(max(M[0, :, r]) / 2 + max(M[1, :, r]) / 2, rel=1e-5)
    _, best = scalar(sim, "2_specialisation/student_rank_0")
    assert best[-1] == pytest.approx(np.mean([M[i].max() for i in range(2)]), rel=1e-5)
    _, off = scalar(sim, "3_Q/offdiag_mean")
    p = Q.shape[1]
    assert off[-1] == pytest.approx(np.mean([(Q[i].sum() - np.trace(Q[i])) / (p * p - p) for i in range(2)]), rel=1e-5)


def test_heat_maps_for_simulation_and_ode_at_the_same_steps(run):
    _, out, results, _ = run
    sim, ode = events(out / "tensorboard" / "simulation"), events(out / "tensorboard" / "ode")
    assert sim.Tags()["images"] == ["heatmaps/replica_00"] and ode.Tags()["images"] == ["heatmaps/replica_00"]
    sim_frames, ode_frames = sim.Images("heatmaps/replica_00"), ode.Images("heatmaps/replica_00")
    assert 2 <= len(sim_frames) <= 6
    assert [f.step for f in sim_frames] == [f.step for f in ode_frames]
    assert sim_frames[0].step == 0 and sim_frames[-1].step == results["steps"][-1]
    # simulation and ODE rows in the simulation's image: taller than the ODE-only one
    assert sim_frames[0].height > ode_frames[0].height


def test_hparams_are_exactly_the_physics_with_the_final_risk(run):
    _, out, results, _ = run
    sim = events(out / "tensorboard" / "simulation")
    content = sim.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert set(start.hparams) == PHYSICS_KEYS
    values = {
        key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for key, value in start.hparams.items()
    }
    # blue line, d = 1000, p = 8, γ0 = 8 (docs/theory.md §5): τ = d, γ = γ0,
    # c1 = τγ/(pd) = γ0/p, c2 = τγ²/(p²d) = (γ0/p)²
    assert values["region"] == "plateau" and values["theta"] == 0 and values["tau"] == 1000
    assert values["prefactor_drift"] == pytest.approx(1.0) and values["prefactor_noise"] == pytest.approx(1.0)
    assert values["activation"] == "erf" and values["p"] == 8 and values["k"] == 4
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"hp/risk_final", "hp/risk_final_se"}
    final = results["risk"][:, -1]
    assert scalar(sim, "hp/risk_final")[1][-1] == pytest.approx(final.mean(), rel=1e-6)
    assert scalar(sim, "hp/risk_final_se")[1][-1] == pytest.approx(final.std(ddof=1) / math.sqrt(2), rel=1e-5)


def test_ode_status_and_risk_png_title(run):
    _, out, results, titles = run
    assert str(results["ode_status"]).startswith("solved: finite ODE")
    assert results["risk_ode"].shape == results["risk"].shape
    (title,) = titles
    for part in ("erf", "k=4", "p=8", "d=1000", "γ0=8", "δ=0", "κ=0", "Δ=0.001", "blue line (κ+δ=0)", "t = ν/d"):
        assert part in title
    assert "plateau" not in title
    assert (out / "risk.png").stat().st_size > 0


def test_ode_over_budget_stops_and_the_run_still_finishes(tmp_path):
    module = train(compose_run(tmp_path, *QUIET, "d=200", "t_max=2", "callbacks.ode.max_evaluations=3"))
    results = np.load(tmp_path / "results.npz")
    assert str(results["status"]) == "finished" and module.t == pytest.approx(2.0)
    assert str(results["ode_status"]).startswith("stopped: over its budget")
    assert "risk_ode" not in results and "Q_ode" not in results
    assert (tmp_path / "risk.png").exists()


def test_permutation_aware_summaries_survive_relabelling_the_units():
    """Two replicas specialised under different permutations: the replica mean of M_jr
    washes the specialisation out, the summaries keep it, and relabelling units changes nothing."""
    rng = np.random.default_rng(3)
    p, k = 4, 4
    M = np.stack([np.eye(p, k)[rng.permutation(p)] for _ in range(2)]) + 0.01 * rng.normal(size=(2, p, k))
    Q = np.stack([np.eye(p)] * 2) + 0.01
    values = overlap_scalars(Q, M, max_matrix_entries=64, max_units=16)
    assert all(values[f"specialisation/teacher_{r}"] > 0.97 for r in range(k))
    assert values["specialisation/student_rank_0"] > 0.97 and values["specialisation/student_rank_3"] > 0.97
    perm = rng.permutation(p)
    relabelled = overlap_scalars(Q[:, perm][:, :, perm], M[:, perm], max_matrix_entries=0, max_units=16)
    for key, value in relabelled.items():
        assert value == pytest.approx(values[key], rel=1e-12)
    assert "M/0_0" not in relabelled  # entries are off when p·k > max_matrix_entries


def test_alignment_order_makes_specialisation_a_diagonal():
    rng = np.random.default_rng(4)
    M = np.kron(np.eye(4), np.ones((2, 1)))[rng.permutation(8)] + 0.01 * rng.random((8, 4))  # 2 students per teacher
    ordered = M[alignment_order(M)]
    assert list(ordered.argmax(1)) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_frames_are_log_spaced_and_include_both_ends():
    t = np.concatenate([[0.0], np.logspace(-2, 2, 41)])
    idx = frame_indices(t, 6)
    assert idx[0] == 0 and idx[-1] == t.size - 1 and len(idx) == 6
    np.testing.assert_allclose(np.diff(np.log10(t[idx[1:]])), 1.0, atol=1e-9)  # 0.01, 0.1, …, 100


def test_ode_wall_time_limit_holds_inside_one_long_evaluation(tmp_path, monkeypatch):
    """One drift evaluation at large p can outlast the budget (solve_ode checks its deadline
    between evaluations): the callback stops waiting anyway and the run finishes."""

    def stuck_solve(*args, **kwargs):
        time.sleep(30)  # an evaluation that ignores the deadline

    monkeypatch.setattr(ode_prediction, "solve_ode", stuck_solve)
    monkeypatch.setattr(ode_prediction, "GRACE_SECONDS", 0.5)
    start = time.perf_counter()
    train(compose_run(tmp_path, *QUIET, "d=100", "t_max=0.5", "callbacks.ode.max_seconds=1"))
    assert time.perf_counter() - start < 25
    results = np.load(tmp_path / "results.npz")
    assert str(results["status"]) == "finished"
    assert str(results["ode_status"]).startswith("stopped: over its budget") and "drift evaluation after 1 s" in str(
        results["ode_status"]
    )
