"""The Lightning run end to end: replicas, seeds, resume, outputs, refused input."""

from __future__ import annotations

import math
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from conftest import QUIET, ROOT
from hydra.utils import instantiate

from phasesgd.app.build import build_module, build_trainer
from phasesgd.app.train import train
from phasesgd.infra.validation import ConfigError
from phasesgd.sgd.seeding import generator
from phasesgd.training.module import DivergenceError

SMALL = [*QUIET, "d=200", "t_max=2", "callbacks.order_parameters=null"]


def test_batched_replica_equals_the_same_replica_alone(make_config, tmp_path):
    """Same data, same initialisation; only BLAS summation order differs (hence float64)."""
    batched = train(make_config(*SMALL, "dtype=float64", "replicas=3", output_dir=tmp_path / "a"))
    alone = train(make_config(*SMALL, "dtype=float64", "replicas=1", "replica_offset=1", output_dir=tmp_path / "b"))
    torch.testing.assert_close(alone.student.weight[0], batched.student.weight[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.stack(alone.history.risk)[:, 0], np.stack(batched.history.risk)[:, 1], rtol=1e-9)


def test_seed_reproduces_and_another_seed_differs(make_config, tmp_path):
    runs = [train(make_config(*SMALL, f"seed={s}", output_dir=tmp_path / str(i))) for i, s in enumerate([5, 5, 6])]
    risks = [np.stack(r.history.risk) for r in runs]
    np.testing.assert_array_equal(risks[0], risks[1])
    assert not np.allclose(risks[0][1:], risks[2][1:])


class _StopAfter(L.Callback):
    """Interrupts the run after ``chunks`` training steps, as a crash or a cluster pre-emption would."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 == self.chunks:
            raise RuntimeError("simulated pre-emption")


def test_resume_reproduces_the_uninterrupted_trajectory(make_config, tmp_path):
    overrides = [*SMALL, "replicas=2", "data.chunk_steps=64", "t_max=5"]
    full = train(make_config(*overrides, output_dir=tmp_path / "full"))

    cfg = make_config(*overrides, output_dir=tmp_path / "cut")
    module, trainer = build_module(cfg), build_trainer(cfg)
    trainer.callbacks.append(_StopAfter(chunks=15))
    with pytest.raises(RuntimeError, match="pre-emption"):
        trainer.fit(module)
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and 0 < module.sgd_steps < full.sgd_steps

    resumed = train(make_config(*overrides, f"resume={ckpt}", output_dir=tmp_path / "cut"))
    assert resumed.sgd_steps == full.sgd_steps
    torch.testing.assert_close(resumed.student.weight, full.student.weight, rtol=0, atol=0)
    np.testing.assert_array_equal(np.stack(resumed.history.risk), np.stack(full.history.risk))
    saved = np.load(tmp_path / "cut" / "results.npz")
    np.testing.assert_array_equal(saved["risk"], np.stack(full.history.risk, axis=1))


def test_train_script_writes_results_tensorboard_and_plot(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        f"hydra.run.dir={run_dir}",
        "d=100",
        "t_max=1",
        "replicas=2",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = np.load(run_dir / "results.npz")
    T = results["t"].shape[0]
    assert results["risk"].shape == (2, T) and results["t"][0] == 0 and results["t"][-1] == pytest.approx(1.0)
    assert results["Q0"].shape == (2, 8, 8) and results["M0"].shape == (2, 8, 4) and results["P"].shape == (4, 4)
    assert results["Q"].shape == (2, 8, 8) and results["M"].shape == (2, 8, 4)
    assert "teacher" in str(results["config"]) and str(results["status"]) == "finished"
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run_dir / "risk.png").stat().st_size > 0 and (run_dir / "config.yaml").exists()
    # The initial risk of this init family (docs/theory.md §1) is ≈ 0.06; it must be printed into the log too.
    assert 0.03 < results["risk"][:, 0].mean() < 0.1


def test_results_match_the_measured_weights(make_config):
    """Q, M in results.npz are W Wᵀ/d and W W*ᵀ/d of the final weights, recomputed here."""
    module = train(make_config(*SMALL, "replicas=2"))
    W, Ws = module.student.weight.double(), module.teacher.weight.double()
    np.testing.assert_allclose(module.history.Q[-1], (W @ W.transpose(1, 2) / 200).numpy(), rtol=1e-12)
    np.testing.assert_allclose(module.history.M[-1], (W @ Ws.T / 200).numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "override, message",
    [
        ("d=0", "d must be an integer >= 1"),
        ("replicas=0", "replicas must be an integer >= 1"),
        ("teacher.width=0", "teacher.width must be an integer >= 1"),
        ("student.width=0", "student.width must be an integer >= 1"),
        ("teacher.noise=-0.1", "teacher.noise must be a finite number >= 0"),
        ("lr.gamma0=0", "lr.gamma0 must be a finite number > 0"),
        ("lr.gamma0=-1", "lr.gamma0 must be a finite number > 0"),
        ("t_max=0", "t_max must be a finite number > 0"),
        ("activation.name=softsign_nowhere", "unknown activation 'softsign_nowhere'"),
        ("teacher.activation=nope", "teacher.activation: unknown activation 'nope'"),
    ],
)
def test_refused_input_names_the_key_and_range(make_config, override, message):
    cfg = make_config(*SMALL, override)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_module(cfg)


def test_unknown_schedule_is_refused_by_hydra(make_config):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="lr"):
        make_config("lr=cosine_nowhere")


def test_divergence_stops_with_a_message_and_keeps_results(make_config, tmp_path):
    cfg = make_config(*SMALL, "activation=linear", "lr.gamma0=100", "measure.max_risk=10")
    with pytest.raises(DivergenceError, match="diverged|non-finite"):
        train(cfg)
    results = np.load(tmp_path / "results.npz")
    assert "DivergenceError" in str(results["status"])
    assert results["risk"].shape[1] >= 1 and np.isfinite(results["risk"][:, 0]).all()


def test_every_config_in_every_group_composes_and_instantiates(make_config):
    groups = {p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in (ROOT / "conf").iterdir() if p.is_dir()}
    assert {"teacher", "student", "activation", "lr", "data", "trainer", "logger", "callbacks", "experiment"} <= set(
        groups
    )
    for group, options in groups.items():
        for option in options:
            extra = ["activation.name=torch.nn.functional.silu"] if (group, option) == ("activation", "custom") else []
            cfg = make_config(f"{group}={option}", *extra, "d=50")
            if group == "experiment":
                continue  # experiments are composed here and run in their own tests
            module = build_module(cfg)
            assert module.student.dim == 50
            build_trainer(cfg)
            for key in ("callbacks", "logger"):
                if cfg.get(key):
                    instantiate(cfg[key])


def test_summary_row_and_skip_of_a_finished_run(make_config, tmp_path):
    import json

    first = train(make_config(*SMALL, "replicas=2", "seed=4"))
    row = json.loads((tmp_path / "summary.json").read_text())
    assert row["status"] == "finished" and row["seed"] == 4 and (row["d"], row["p"], row["k"]) == (200, 8, 4)
    assert row["regime"] == "plateau" and row["risk_final_mean"] == pytest.approx(first.history.risk[-1].mean())
    assert train(make_config(*SMALL, "replicas=2", "seed=4")) is None  # same physics: skipped
    with pytest.raises(ConfigError, match="holds a run of other physics"):  # other physics: not over this run
        train(make_config(*SMALL, "replicas=2", "seed=5"))


def test_a_diverging_point_does_not_end_a_multirun(tmp_path):
    import json

    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "-m",
        f"hydra.sweep.dir={tmp_path}",
        "d=50",
        "t_max=1",
        "activation=linear",
        "measure.max_risk=10",
        "replicas=1",
        "lr.gamma0=100,1",
        "callbacks.progress=null",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {json.loads(p.read_text())["gamma0"]: json.loads(p.read_text()) for p in tmp_path.rglob("summary.json")}
    assert rows[100]["status"].startswith("DivergenceError") and rows[1]["status"] == "finished"


def _reference_blue_line(d: int, replicas: int, t_max: float, seed: int = 0):
    """The default experiment (docs/theory.md §1: erf committee, k = 4, p = 8, Δ = 1e-3,
    γ = γ0 = 8, orthonormal teacher, Gaussian student of row norm √d) as a plain numpy loop,
    on the documented random streams: per-stream torch generators seeded by
    ``derive_seed(seed, name[, replica])``, and each replica's inputs drawn interval by
    interval between measurement times (x for the interval's steps, then its ξ).
    Returns the measured steps and the risk (R, T) from the closed form of I2 for erf."""
    k, p, noise, gamma = 4, 8, 1e-3, 8.0
    erf = np.vectorize(math.erf)
    sigma = lambda z: erf(z / math.sqrt(2.0))  # noqa: E731
    dsigma = lambda z: math.sqrt(2.0 / math.pi) * np.exp(-0.5 * z * z)  # noqa: E731
    normals = lambda gen, *shape: torch.empty(*shape, dtype=torch.float64).normal_(generator=gen).numpy()  # noqa: E731

    def rows(name, *keys, count):
        w = torch.randn(count, d, generator=generator(seed, name, *keys), dtype=torch.float64).numpy()
        if name == "teacher":
            w = np.linalg.qr(w.T)[0].T
        return w * (math.sqrt(d) / np.linalg.norm(w, axis=1, keepdims=True))

    def risk(W, Ws):
        C = np.block([[W @ W.T, W @ Ws.T], [Ws @ W.T, Ws @ Ws.T]]) / d  # covariance of (λ, λ*)
        diag = 1.0 + np.diag(C)
        I2 = (2 / np.pi) * np.arcsin(C / np.sqrt(np.outer(diag, diag)))  # E erf(u/√2) erf(v/√2)
        w = np.concatenate([np.full(p, 1 / p), np.full(k, -1 / k)])
        return 0.5 * w @ I2 @ w

    n = math.ceil(math.log10(t_max / 1e-2) * 10) + 1
    steps = np.unique(np.rint(np.concatenate([[0.0], np.logspace(-2, math.log10(t_max), n)]) * d).astype(int))
    Ws = rows("teacher", count=k)
    curves = []
    for r in range(replicas):
        W, gen = rows("student", r, count=p), generator(seed, "data", r)
        curve = [risk(W, Ws)]
        for start, stop in zip(steps[:-1], steps[1:]):
            x, xi = normals(gen, stop - start, d), normals(gen, stop - start)
            for s in range(stop - start):
                y = sigma(Ws @ x[s] / math.sqrt(d)).mean() + math.sqrt(noise) * xi[s]
                lam = W @ x[s] / math.sqrt(d)
                W += (gamma / (p * math.sqrt(d))) * (y - sigma(lam).mean()) * dsigma(lam)[:, None] * x[s][None, :]
            curve.append(risk(W, Ws))
        curves.append(curve)
    return steps, np.array(curves)


def test_default_physics_equals_a_plain_reference_loop(make_config):
    """The default run (blue line) gives the same risk as before to 1e-12 — checked
    against the reference loop above, not against numbers of the code's own output."""
    d, replicas, t_max = 40, 2, 3.0
    overrides = [
        *QUIET,
        "callbacks.order_parameters=null",
        "callbacks.ode=null",
        "dtype=float64",
        f"d={d}",
        f"replicas={replicas}",
        f"t_max={t_max}",
        "data.chunk_steps=1000000",
        "data.prefetch=false",
    ]
    module = train(make_config(*overrides))
    steps, risk = _reference_blue_line(d, replicas, t_max)
    np.testing.assert_array_equal(module.history.steps, steps)
    np.testing.assert_allclose(np.stack(module.history.risk, axis=1), risk, rtol=1e-12, atol=0)
    assert risk[:, -1].max() < 0.8 * risk[:, 0].min()  # it learned: the comparison is not of two constants


def test_the_end_of_run_sequence_does_not_depend_on_the_config_order(make_config, tmp_path):
    """Callbacks listed in reverse still act as bar, prediction, TensorBoard, results, checkpoint:
    results.npz holds the prediction, and the final checkpoint is written after it."""
    from omegaconf import OmegaConf

    from phasesgd.training.callbacks import end_of_run_order

    cfg = make_config(*QUIET, "d=50", "t_max=1", "replicas=2", "callbacks.order_parameters=null")
    reverse = OmegaConf.create(dict(reversed(list(OmegaConf.to_container(cfg.callbacks).items()))))
    cfg.callbacks = reverse
    assert list(cfg.callbacks)[0] == "checkpoint"
    trainer = build_trainer(cfg)
    names = [type(c).__name__ for c in end_of_run_order(trainer.callbacks) if hasattr(c, "stage")]
    assert names == ["ODEPrediction", "ResultsWriter", "SGDCheckpoint"]
    train(cfg)
    results = np.load(tmp_path / "results.npz")
    assert str(results["ode_status"]).startswith("solved") and results["risk_ode"].shape == results["risk"].shape
    assert (tmp_path / "checkpoints" / "last.ckpt").stat().st_mtime_ns >= (tmp_path / "results.npz").stat().st_mtime_ns
