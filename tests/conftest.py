"""Shared fixtures: composing the Hydra config without running the app."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Keep unit-test runs short and quiet; each test overrides what it needs.
QUIET = ["trainer.enable_progress_bar=false", "callbacks.progress=null", "~logger"]


@pytest.fixture
def float64_default():
    """float64 tensors by default within a test (autograd oracles and drawn chunks need it)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small tensor operations: on a shared machine a second
    thread costs more in hand-offs than it saves."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_config(tmp_path):
    """compose(overrides) → a config writing into a fresh temporary directory."""

    def make(*overrides: str, output_dir: Path | None = None):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=[f"output_dir={output_dir or tmp_path}", *overrides])

    return make
