"""Every config value is refused before compute in one line naming the key and the allowed
range: the validators' properties, runs that would otherwise be silently wrong, and the
script's exit status 2 without a traceback."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import QUIET, ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from phasesgd.app.build import RunSize, build_module, build_trainer, run_size
from phasesgd.app.initial_conditions import load_initial_conditions
from phasesgd.infra.validation import (
    MAX_SGD_STEPS,
    ConfigError,
    require_at_least,
    require_finite,
    require_finite_or_null,
    require_nonnegative,
    require_positive,
    require_step_count,
)

SMALL = [*QUIET, "d=50", "t_max=1", "replicas=1"]

anything = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


def _refuses(check, *args) -> str | None:
    try:
        check(*args)
    except ConfigError as err:
        return str(err)
    return None


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@given(value=anything, low=st.integers(-3, 3))
def test_require_at_least_accepts_exactly_the_integers_from_low(value, low):
    message = _refuses(require_at_least, "some.key", value, low)
    accepted = isinstance(value, int) and not isinstance(value, bool) and value >= low
    assert (message is None) == accepted
    if message is not None:
        assert message.startswith("some.key must be an integer >= ") and "\n" not in message


@given(value=anything)
def test_the_number_checks_accept_exactly_their_ranges(value):
    rules = [
        (require_positive, lambda x: _is_real(x) and x > 0, "a finite number > 0"),
        (require_nonnegative, lambda x: _is_real(x) and x >= 0, "a finite number >= 0"),
        (require_finite, _is_real, "a finite number"),
        (require_finite_or_null, lambda x: x is None or _is_real(x), "a finite number or null"),
    ]
    for check, allowed, phrase in rules:
        message = _refuses(check, "lr.delta", value)
        assert (message is None) == allowed(value), (check.__name__, value)
        if message is not None:
            assert message.startswith(f"lr.delta must be {phrase}, got ") and "\n" not in message


@given(exponent=st.floats(0, 400))
def test_step_counts_beyond_int64_are_refused(exponent):
    steps = 10.0**exponent if exponent < 300 else math.inf
    assert (_refuses(require_step_count, steps, "t_max") is None) == (steps < MAX_SGD_STEPS)


@settings(max_examples=30, deadline=None)
@given(
    p=st.integers(1, 6),
    k=st.integers(1, 4),
    file_p=st.integers(1, 6),
    file_k=st.integers(1, 4),
    replicas=st.integers(0, 2),
)
def test_init_files_are_accepted_exactly_when_their_shapes_fit_the_config(
    tmp_path_factory, p, k, file_p, file_k, replicas
):
    lead = (replicas,) if replicas else ()
    path = tmp_path_factory.mktemp("init") / "init.npz"
    np.savez(path, Q0=np.ones(lead + (file_p, file_p)), M0=np.ones(lead + (file_p, file_k)), P=np.eye(file_k))
    message = _refuses(load_initial_conditions, path, p, k)
    assert (message is None) == (file_p == p and file_k == k)
    if message is not None:
        assert message.startswith("init: ") and "\n" not in message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["kappa=-3"], "kappa must be a finite number >= 0, got -3"),
        (["theta=nan"], "theta must be a finite number or null, got nan"),
        (["lr.delta=nan"], "lr.delta must be a finite number, got nan"),
        (
            ["d=1000", "lr.delta=6"],
            r"t_max=1 at d=1000 with t = ν/d\^7 .* SGD steps, more than the int64 step counter holds",
        ),
        (["d=1000", "lr.delta=50"], r"more than the int64 step counter holds"),
        (["d=1000", "kappa=5"], r"d=1000, p=8000000000000000, .* need about .* GB, but only .* GB are available"),
        (["d=10000000", "replicas=4"], r"d=10000000, p=8, replicas=4, data.chunk_steps=512, .* need about"),
        (
            ["activation=custom", "activation.name=os:system"],
            r"teacher.activation: 'os:system' is not an elementwise torch function",
        ),
        (["activation=custom"], r"Missing mandatory value: activation.name"),
        (["seed=-1"], "seed must be an integer >= 0, got -1"),
        (["cpu_threads=0"], "cpu_threads must be an integer >= 1, got 0"),
        (["d=abc"], "d must be an integer >= 1, got 'abc'"),
        (["callbacks.checkpoint.every_seconds=0"], "callbacks.checkpoint.every_seconds must be a finite number > 0"),
        (["callbacks.checkpoint.every_steps=0"], "callbacks.checkpoint.every_steps must be an integer >= 1"),
        (["lr=power_law", "lr.t0=-1"], "lr.t0 must be a finite number > 0"),
        (["data.chunk_steps=0"], "data.chunk_steps must be an integer >= 1"),
        (["measure.max_risk=inf"], "measure.max_risk must be a finite number > 0"),
    ],
)
def test_silently_wrong_runs_are_refused_before_compute(make_config, overrides, message):
    """Each of these would run silently wrong (or allocate terabytes) if not refused."""
    with pytest.raises(ConfigError, match=message) as err:
        cfg = make_config(*SMALL, *overrides)
        build_module(cfg)
        build_trainer(cfg)
    assert "\n" not in str(err.value)


def test_the_memory_estimate_covers_the_weights_and_a_data_chunk(make_config):
    cfg = make_config(*SMALL, "replicas=3", "dtype=float64", "data.chunk_steps=100")
    size = run_size(cfg)
    assert size == RunSize(d=50, p=8, k=4, replicas=3, chunk_steps=100, batch_size=1, itemsize=8)
    module = build_module(cfg)
    weights, data = size.bytes_needed()
    assert weights >= module.student.weight.numel() * 8 * 2  # the weights and their chunk-start copy at least
    assert data >= 3 * 100 * 50 * 8  # one chunk of inputs, per replica: at least one copy


@pytest.mark.slow
def test_config_errors_are_one_line_with_exit_status_2(tmp_path):
    cases = (
        ("kappa=-3", "kappa"),
        ("activation=custom", "activation.name"),
        ("resume=/nonexistent", "resume"),
        ("lr=cosine_nowhere", "lr/cosine_nowhere"),
    )  # the last one Hydra itself cannot compose
    for override, key in cases:
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), f"hydra.run.dir={tmp_path / 'run'}", override]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(errors) == 1 and re.search(rf"\b{re.escape(key)}\b", errors[0]) and "Traceback" not in proc.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()
