"""What `scripts/train.py` prints: the progress bar and our lines, no Lightning chatter
(unless hydra.verbose), --help, and a diverging run reported at once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import ROOT

from phasesgd.app.train import train

TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
# Lines Lightning and PyTorch print on a plain run, as fragments.
CHATTER = ("GPU available", "TPU available", "litlogger", "LeafSpec", "max_epochs", "weights_only", "srun")


def run_train(tmp_path, *overrides: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, float]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [*TRAIN, f"hydra.run.dir={tmp_path}", *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )
    return proc, time.perf_counter() - start


@pytest.mark.slow
def test_default_run_prints_the_bar_and_our_lines_only(tmp_path):
    proc, _ = run_train(tmp_path / "quiet", "d=100", "t_max=1", "replicas=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for fragment in CHATTER:
        assert fragment not in console, f"{fragment!r} printed:\n{console[-3000:]}"
    bar = console.replace("\r", "\n")
    assert "SGD: 100%" in bar and "100/100" in bar and "t=1/1" in bar  # SGD steps ν_max = 100, t_max = 1
    assert "ODE prediction: solving the finite ODE" in console
    assert "risk=" in console and "results:" in console
    # what isn't progress bar: a few lines of ours
    lines = [line for line in bar.splitlines() if line.strip() and not line.startswith("SGD")]
    assert all("[phasesgd" in line for line in lines) and len(lines) <= 4, lines

    verbose, _ = run_train(tmp_path / "verbose", "d=100", "t_max=1", "replicas=2", "hydra.verbose=true")
    assert verbose.returncode == 0 and "GPU available" in verbose.stdout + verbose.stderr


def test_help_describes_groups_defaults_and_examples(tmp_path):
    proc = subprocess.run([*TRAIN, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert text.startswith("train.py: online SGD of a two-layer student")
    assert "experiment   [blue_line]" in text and "replicas=4" in text and "activation   [erf]" in text
    examples = text.split("== Examples ==")[1].split("==")[0]
    assert examples.count("python scripts/train.py") == 3
    assert text.index("== Examples ==") < text.index("== Full configuration")


@pytest.mark.slow
def test_a_diverging_run_is_reported_within_seconds(tmp_path):
    """The prediction never hides a divergence (it is solved only after training)."""
    proc, seconds = run_train(tmp_path, "d=100", "activation=relu", "lr.gamma0=1000")
    assert proc.returncode == 1
    assert "run diverged at t=" in proc.stderr + proc.stdout
    assert seconds < 60  # start-up included, on a loaded 2-core machine; ~10 s unloaded


def test_a_log_file_gets_plain_bar_lines_not_carriage_returns(tmp_path):
    """stdout redirected to a file: the bar is written as whole lines (here only the last, the
    run takes less than line_seconds), not as hundreds of carriage-return redraws."""
    log = tmp_path / "out.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [*TRAIN, f"hydra.run.dir={tmp_path / 'run'}", "d=50", "t_max=5"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = log.read_text()
    bars = [line for line in text.splitlines() if line.startswith("SGD:")]
    assert text.count("\r") <= 2 and 1 <= len(bars) <= 3, text[-3000:]
    assert "100%" in bars[-1] and "250/250" in bars[-1] and "t=5/5" in bars[-1] and "risk=" in bars[-1]


def test_the_bar_prints_a_line_every_line_seconds_when_stdout_is_not_a_terminal(make_config, capsys):
    cfg = make_config(
        "d=50", "t_max=5", "replicas=1", "~logger", "callbacks.ode=null", "callbacks.progress.line_seconds=1e-9"
    )
    train(cfg)
    out = capsys.readouterr().out  # pytest's capture: not a terminal
    bars = out.splitlines()
    assert "\r" not in out and len(bars) > 5 and all(line.startswith("SGD: ") for line in bars), out[-2000:]
    assert bars[-1].startswith("SGD: 100%") and "250/250" in bars[-1] and "t=5/5" in bars[-1]
