"""Reliability: a failed resume never touches the run it resumes, every
checkpoint resumes bit for bit, a failing write never skips the other, files keep the
umask's mode, and sweeps leave neither temporaries nor orphaned workers behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import QUIET, ROOT
from hydra.utils import instantiate

from phasesgd.app.build import build_module, build_trainer
from phasesgd.app.train import train
from phasesgd.infra.io import TEMPORARY_MARK, atomic_path
from phasesgd.infra.validation import ConfigError
from phasesgd.training.callbacks import ResultsWriter, SGDCheckpoint

SMALL = [
    *QUIET,
    "d=100",
    "t_max=2",
    "replicas=2",
    "callbacks.order_parameters=null",
    "callbacks.ode=null",
    "data.chunk_steps=64",
]


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


class _Raise(L.Callback):
    """Raises ``error`` at the start of training or after ``chunks`` training steps."""

    def __init__(self, error: BaseException, chunks: int | None = None) -> None:
        self.error, self.chunks = error, chunks

    def on_train_start(self, trainer, pl_module):
        if self.chunks is None:
            raise self.error

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 == self.chunks:
            raise self.error


@pytest.fixture
def finished_run(make_config, tmp_path):
    """A small finished run and its checkpoint."""
    folder = tmp_path / "run"
    module = train(make_config(*SMALL, output_dir=folder))
    return folder, folder / "checkpoints" / "last.ckpt", module


# ----- 1. a failed resume destroys the run it resumes -------------------------------------------
def test_a_refused_resume_leaves_the_run_untouched(make_config, tmp_path, finished_run):
    folder, ckpt, _ = finished_run
    before = _files(folder)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.ckpt").write_bytes(b"")
    (bad / "truncated.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save({"state_dict": {"w": torch.zeros(3)}}, bad / "foreign.ckpt")
    cases = [
        ([f"resume={ckpt}", "student.width=4"], "other physics.*student.width: 8 → 4"),
        ([f"resume={bad / 'empty.ckpt'}"], "empty"),
        ([f"resume={bad / 'truncated.ckpt'}"], "cannot be read as a checkpoint"),
        ([f"resume={bad / 'foreign.ckpt'}"], "not a phasesgd checkpoint"),
        (["resume=/nonexistent/last.ckpt"], "no checkpoint file at /nonexistent/last.ckpt"),
    ]
    for overrides, message in cases:
        for output in (folder, tmp_path / "fresh"):
            with pytest.raises(ConfigError, match=message) as err:
                train(make_config(*SMALL, *overrides, output_dir=output))
            assert "\n" not in str(err.value)
    assert _files(folder) == before
    assert not (tmp_path / "fresh").exists()  # resume=/nonexistent leaves no step-0 checkpoint


def test_a_failure_during_start_up_writes_nothing_into_the_run(make_config, finished_run):
    folder, ckpt, _ = finished_run
    before = _files(folder)
    cfg = make_config(*SMALL, f"resume={ckpt}", output_dir=folder)
    module, trainer = build_module(cfg), build_trainer(cfg)
    trainer.callbacks.append(_Raise(RuntimeError("start-up failed")))
    with pytest.raises(RuntimeError, match="start-up failed"):
        trainer.fit(module, ckpt_path=ckpt)
    assert _files(folder) == before


# ----- 2. Ctrl-C then resume is not exact ---------------------------------------------------------
def test_resume_after_ctrl_c_inside_a_chunk_is_exact(make_config, tmp_path):
    """Ctrl-C lands after the chunk's data were drawn (and the next chunk is being drawn in
    the background) but before the step counter moved: the checkpoint must hold the data
    streams at the step counter, not one chunk later."""
    overrides = [*SMALL, "t_max=3"]
    full = train(make_config(*overrides, output_dir=tmp_path / "full"))

    cfg = make_config(*overrides, output_dir=tmp_path / "cut")
    module, trainer = build_module(cfg), build_trainer(cfg)
    labels, calls = module.teacher.labels, []

    def interrupted_labels(*args):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return labels(*args)

    module.teacher.labels = interrupted_labels
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into exit(1) after its shutdown
            trainer.fit(module)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["phasesgd"]
    assert 0 < saved["sgd_steps"] < full.sgd_steps
    resumed = train(make_config(*overrides, f"resume={ckpt}", output_dir=tmp_path / "cut"))
    torch.testing.assert_close(resumed.student.weight, full.student.weight, rtol=0, atol=0)
    np.testing.assert_array_equal(
        np.load(tmp_path / "cut" / "results.npz")["risk"], np.stack(full.history.risk, axis=1)
    )


# ----- 3. resume accepts changed physics ----------------------------------------------------------
def test_resume_refuses_other_physics_and_a_shorter_t_max(make_config, finished_run):
    folder, ckpt, first = finished_run
    with pytest.raises(ConfigError, match=r"lr.gamma0: 8.0 → 4.*seed: 0 → 5"):
        train(make_config(*SMALL, f"resume={ckpt}", "lr.gamma0=4", "seed=5", output_dir=folder))
    with pytest.raises(ConfigError, match=r"t_max=1 is shorter than the checkpoint's t_max=2"):
        train(make_config(*SMALL, f"resume={ckpt}", "t_max=1", output_dir=folder))
    longer = train(make_config(*SMALL, f"resume={ckpt}", "t_max=4", output_dir=folder))
    assert longer.t == pytest.approx(4.0)
    T = len(first.history)
    np.testing.assert_array_equal(np.stack(longer.history.risk[:T]), np.stack(first.history.risk))
    saved = np.load(folder / "results.npz")
    assert saved["t"][-1] == pytest.approx(4.0) and np.all(np.diff(saved["t"]) > 0)


# ----- 4. a write failure at the end loses everything ---------------------------------------------
def test_a_failing_results_write_does_not_skip_the_checkpoint(make_config, tmp_path, monkeypatch):
    def full_disk(self, module, status):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ResultsWriter, "write", full_disk)
    cfg = make_config(*SMALL, "t_max=3")
    module, trainer = build_module(cfg), build_trainer(cfg)
    trainer.callbacks.append(_Raise(RuntimeError("simulated pre-emption"), chunks=10))
    with pytest.raises(RuntimeError, match="pre-emption"):  # the interruption's error, not the disk's
        trainer.fit(module)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["phasesgd"]
    assert saved["sgd_steps"] == module.sgd_steps > 0


def test_a_failing_results_write_at_the_end_still_leaves_the_final_checkpoint(make_config, tmp_path, monkeypatch):
    def full_disk(self, module, status):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ResultsWriter, "write", full_disk)
    cfg = make_config(*SMALL)
    module, trainer = build_module(cfg), build_trainer(cfg)
    with pytest.raises(OSError, match="No space left"):  # the user learns that the results are missing
        trainer.fit(module)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["phasesgd"]
    assert saved["sgd_steps"] == module.sgd_steps == module.measure_steps[-1]


def test_results_are_written_before_the_checkpoint(make_config):
    cfg = make_config(*SMALL)
    cfg.callbacks = {
        "checkpoint": cfg.callbacks.checkpoint,
        "results": cfg.callbacks.results,
    }  # listed the wrong way round
    kinds = [type(c) for c in build_trainer(cfg).callbacks if isinstance(c, (ResultsWriter, SGDCheckpoint))]
    assert kinds == [ResultsWriter, SGDCheckpoint]


# ----- 5. SIGKILL of a short run loses everything -------------------------------------------------
class _CheckpointLag(L.Callback):
    """Records, after every chunk, how many SGD steps the run is ahead of its last checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path, self.lags = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        saved = torch.load(self.path, weights_only=True)["phasesgd"]["sgd_steps"] if self.path.exists() else 0
        self.lags.append(pl_module.sgd_steps - saved)


@pytest.mark.parametrize("every", ["callbacks.checkpoint.every_steps=100", "callbacks.checkpoint.every_seconds=1e-6"])
def test_checkpoints_come_by_sgd_steps_or_by_wall_time(make_config, tmp_path, every):
    assert instantiate(make_config().callbacks.checkpoint).every_seconds <= 60  # a killed run loses at most a minute
    cfg = make_config(*SMALL, every)
    module, trainer = build_module(cfg), build_trainer(cfg)
    spy = _CheckpointLag(tmp_path / "checkpoints" / "last.ckpt")
    trainer.callbacks.insert(0, spy)  # runs before the checkpoint: sees the one of the chunk before
    trainer.fit(module)
    chunk = cfg.data.chunk_steps
    assert len(spy.lags) > 10 and max(spy.lags) <= (100 + chunk if "every_steps" in every else chunk)


# ----- 8. outputs are written with mode 0600 ------------------------------------------------------
def test_files_keep_the_mode_the_umask_gives(make_config, tmp_path):
    old = os.umask(0o027)
    try:
        train(make_config(*SMALL, "callbacks.ode=null", output_dir=tmp_path / "run"))
    finally:
        os.umask(old)
    for name in ("results.npz", "summary.json", "config.yaml", "risk.png", "checkpoints/last.ckpt"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o640, name


# ----- 9. sweeps: temporaries and orphaned workers ------------------------------------------------
def test_no_temporary_is_left_behind(make_config, tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "x.npz") as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # A SIGKILL mid-write leaves one; the next attempt at the point removes it, and nothing else.
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    stale = [
        tmp_path / "run" / f".risk.png.0a1b{TEMPORARY_MARK}.png",
        tmp_path / "run" / "checkpoints" / f".last.ckpt.9f{TEMPORARY_MARK}.ckpt",
    ]
    for path in stale:
        path.write_bytes(b"partial")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train(make_config(*SMALL, output_dir=tmp_path / "run"))
    assert not any(p.exists() for p in stale) and (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert not list((tmp_path / "run").rglob(f"*{TEMPORARY_MARK}*"))


def test_a_point_started_again_continues_where_it_was_interrupted(make_config, tmp_path):
    """A sweep run again (same folder, same physics) continues each interrupted point from its
    checkpoint, bit for bit; a run of other physics is refused there, its files untouched."""
    full = train(make_config(*SMALL, "t_max=3", output_dir=tmp_path / "full"))
    cfg = make_config(*SMALL, "t_max=3", output_dir=tmp_path / "point")
    module, trainer = build_module(cfg), build_trainer(cfg)
    trainer.callbacks.append(_Raise(RuntimeError("killed"), chunks=12))
    with pytest.raises(RuntimeError, match="killed"):
        trainer.fit(module)
    again = train(make_config(*SMALL, "t_max=3", output_dir=tmp_path / "point"))
    np.testing.assert_array_equal(
        np.load(tmp_path / "point" / "results.npz")["risk"], np.stack(full.history.risk, axis=1)
    )
    torch.testing.assert_close(again.student.weight, full.student.weight, rtol=0, atol=0)
    before = _files(tmp_path / "point")
    with pytest.raises(ConfigError, match="output_dir: .* holds a run of other physics .*seed: 0 → 1"):
        train(make_config(*SMALL, "t_max=3", "seed=1", output_dir=tmp_path / "point"))  # other physics: refused
    assert _files(tmp_path / "point") == before  # nothing of the run there was touched


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc (Linux)")
def test_joblib_workers_end_with_the_multirun_process(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "-m",
        "hydra/launcher=local",
        f"hydra.sweep.dir={tmp_path}",
        "d=100",
        "t_max=100000",
        "replicas=1",
        "seed=0,1",
        "callbacks.ode=null",
        "callbacks.checkpoint.every_steps=1000",
        *QUIET,
    ]
    parent = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(tmp_path.rglob("last.ckpt"))) < 2:  # both workers are training
            assert parent.poll() is None and time.monotonic() < deadline, "the sweep did not start"
            time.sleep(0.5)
        workers = {c for c in _children(parent.pid) if _alive(c)}
        assert workers
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 90
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_alive(w) for w in workers), "joblib workers outlived the multirun process"
        statuses = [json.loads(p.read_text())["status"] for p in tmp_path.rglob("summary.json")]
        assert statuses and all("SIGTERM" in s for s in statuses)  # they stopped gracefully, results written
    finally:
        for pid in _children(parent.pid) | {parent.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# ----- the resume matrix: SIGINT, SIGTERM, SIGKILL at random points × resume ------------------------
MATRIX = [
    *QUIET,
    "d=60",
    "replicas=2",
    "t_max=300",
    "data.chunk_steps=64",
    "callbacks.checkpoint.every_steps=256",
    "callbacks.order_parameters=null",
    "callbacks.ode=null",
]


def _train_script(run_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), f"hydra.run.dir={run_dir}", *MATRIX, *overrides]
    return subprocess.Popen(cmd, cwd=run_dir.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _interrupt_at_a_random_point(proc: subprocess.Popen, ckpt: Path, signum: int, rng: np.random.Generator) -> None:
    """Wait for ``n`` periodic checkpoints (n seeded), a seeded fraction of a chunk more, then send ``signum``."""
    deadline, seen, last = time.monotonic() + 240, 0, None
    wanted = int(rng.integers(2, 8))
    while seen < wanted:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        stamp = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        if stamp != last and stamp is not None:
            seen, last = seen + 1, stamp
        time.sleep(0.01)
    time.sleep(float(rng.uniform(0.0, 0.05)))
    proc.send_signal(signum)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: signal.Signals(s).name
)
def test_resume_after_a_signal_at_a_random_point_is_bit_for_bit(make_config, tmp_path, signum):
    reference = train(make_config(*MATRIX, output_dir=tmp_path / "full"))
    expected = {key: np.asarray(value) for key, value in np.load(tmp_path / "full" / "results.npz").items()}
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = _train_script(run_dir)
    _interrupt_at_a_random_point(proc, ckpt, signum, np.random.default_rng(int(signum)))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == {signal.SIGINT: 1, signal.SIGTERM: 143, signal.SIGKILL: -9}[signum], err[-2000:]
    stopped_at = torch.load(ckpt, weights_only=True)["phasesgd"]["sgd_steps"]
    assert 0 < stopped_at < reference.sgd_steps
    if signum != signal.SIGKILL:  # a graceful stop also writes the results up to then
        status = json.loads((run_dir / "summary.json").read_text())["status"]
        assert status != "finished"
        assert np.load(run_dir / "results.npz")["steps"][-1] <= stopped_at

    resumed = _train_script(run_dir, f"resume={ckpt}")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-2000:]
    saved = np.load(run_dir / "results.npz")
    for key in ("t", "steps", "risk", "Q_t", "M_t", "Q", "M", "a"):
        np.testing.assert_array_equal(saved[key], expected[key], err_msg=key)
    assert str(saved["status"]) == "finished" and not list(run_dir.rglob(f"*{TEMPORARY_MARK}*"))
