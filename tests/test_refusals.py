"""Every bad value is refused before compute, in one line that names its full key: a test per
input of the issue, every numeric key of every config group (listed from the composed
config, so that a new key is covered without editing this file), the ODE script's keys,
time below one SGD step, and the scripts' exit status 2 without a traceback."""

from __future__ import annotations

import copy
import functools
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CONF, QUIET, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from phasesgd.app.build import build_module, build_trainer
from phasesgd.app.ode_only import ode_settings
from phasesgd.app.train import train
from phasesgd.infra.validation import ConfigError
from phasesgd.sgd.timegrid import last_step, log_times, measurement_steps
from phasesgd.theory.scaling import Scaling

# A small run whose every callback, the progress bar and the logger included, is configured.
BASE = ["d=50", "t_max=1", "replicas=1"]
# Groups whose options are not settings of one run: experiment selects a scenario (its own
# keys feed the interpolations of other groups' keys, or scripts/phase_diagram.py), hydra is Hydra's.
NOT_RUN_GROUPS = ("experiment", "hydra")
# Wrong type, non-finite, and out of range. -1e9 is below the range of every numeric key:
# each has a lower bound, except lr.delta and theta, which take either sign; at -1e9 they
# set tau = d^(1+theta) = 0 SGD steps per unit of t, which the clock refuses.
BAD_VALUES = ("banana", "nan", "inf", "-1e9")


def _compose(*overrides: str, name: str = "config", output_dir=None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=[f"output_dir={output_dir or '/nonexistent/refusals'}", *overrides])


@functools.cache
def _composed(variant: tuple[str, ...], name: str = "config"):
    return _compose(*(BASE if name == "config" else ()), *variant, name=name)


def _overridden(variant: tuple[str, ...], override: str, name: str = "config"):
    """The config of ``variant`` with ``key=value`` applied as Hydra applies a command-line
    override (parsed by its grammar, then merged in), without composing again (0.3 s a time)."""
    parsed = OverridesParser.create().parse_override(override)
    cfg = copy.deepcopy(_composed(variant, name))
    OmegaConf.update(cfg, parsed.key_or_group, parsed.value(), merge=True)
    return cfg


def _leaves(node, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _group_variants() -> list[tuple[str, ...]]:
    """The default config, then one override per option of each group (conf/<group>/*.yaml)."""
    variants: list[tuple[str, ...]] = [()]
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in NOT_RUN_GROUPS):
        variants += [(f"{folder.name}={option.stem}",) for option in sorted(folder.glob("*.yaml"))]
    return variants


@functools.cache
def _plain(variant: tuple[str, ...], name: str) -> dict:
    return OmegaConf.to_container(_compose(*variant, name=name), resolve=False)


def _settable_keys(name: str = "config", under: str = "", kind=None) -> list[tuple[str, tuple[str, ...]]]:
    """(key, the group override that has it) for every key outside ``hydra.*`` that holds a
    number (not a bool) or null (no type yet: nullable numbers, lists, paths) in some option of
    its group; with ``kind=bool``, the keys that hold true or false. Keys whose value is an
    interpolation (``student.dim: ${d}``) are set through the key they name, and covered there."""
    found: dict[str, tuple[str, ...]] = {}
    for variant in _group_variants() if name == "config" else [()]:
        for key, value in _leaves(_plain(variant, name)):
            if kind is bool:
                wanted = isinstance(value, bool)
            else:
                wanted = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
            if wanted and key.startswith(under) and not key.startswith("hydra."):
                found.setdefault(key, variant)
    return sorted(found.items())


# ``resume`` (null) is a path to a checkpoint, checked by train() against the run it continues
# (tests/test_validation.py::test_config_errors_are_one_line_with_exit_status_2).
RUN_KEYS = [(key, variant) for key, variant in _settable_keys() if key != "resume"]
SWITCHES = _settable_keys(kind=bool)


def _names(message: str, key: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


def _refusal(*overrides: str, cfg=None) -> str:
    cfg = cfg if cfg is not None else _compose(*BASE, *overrides)
    with pytest.raises(ConfigError) as err:
        build_module(cfg)
        build_trainer(cfg)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_the_generated_key_list_covers_every_group():
    keys = {key for key, _ in RUN_KEYS}
    for expected in (
        "d",
        "theta",
        "teacher.noise",
        "student.second_layer_lr",
        "lr.t0",
        "lr.factor",
        "data.chunk_steps",
        "measure.t_min",
        "trainer.devices",
        "callbacks.progress.refresh_rate",
        "callbacks.ode.rtol",
        "callbacks.ode.max_seconds",
        "callbacks.order_parameters.images",
        "callbacks.checkpoint.every_steps",
    ):
        assert expected in keys, expected


@pytest.mark.parametrize("key, variant", RUN_KEYS, ids=[key for key, _ in RUN_KEYS])
def test_every_numeric_key_refuses_a_wrong_type_a_non_finite_and_an_out_of_range_value(key, variant):
    for value in BAD_VALUES:
        message = _refusal(cfg=_overridden(variant, f"{key}={value}"))
        assert _names(message, key), (key, value, message)


def test_every_switch_refuses_what_is_not_true_or_false():
    """A string such as 'banana' (or 'no') would count as true."""
    assert {"skip_finished", "measure.keep_trajectories", "callbacks.results.plot"} <= {key for key, _ in SWITCHES}
    for key, variant in SWITCHES:
        message = _refusal(cfg=_overridden(variant, f"{key}=banana"))
        assert message.startswith(f"{key} must be true or false, got 'banana'"), message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["callbacks.ode.mode=banana"], "callbacks.ode.mode must be one of ['finite', 'asymptotic'], got 'banana'"),
        (["student.init=banana"], "student.init must be one of ['gaussian', 'orthonormal'], got 'banana'"),
        (["teacher.init=banana"], "teacher.init must be one of ['gaussian', 'orthonormal'], got 'banana'"),
        (["teacher.second_layer=banana"], "teacher.second_layer must be a list of 4 finite numbers, got 'banana'"),
        (["teacher.second_layer=[1,2]"], "teacher.second_layer must be a list of 4 finite numbers, got [1, 2]"),
        (["theta=-2"], "t_max=1 holds 0.02 SGD steps at tau = d^(1+theta) = 0.02 steps per unit of t"),
        (["kappa=1", "lr.delta=-2"], "t_max=1 holds 0.02 SGD steps"),  # the no-ODE region's ϑ = 2(κ+δ) = −2
        (["callbacks.ode.method=banana"], "callbacks.ode.method must be one of ['auto', 'dopri5'"),
        (["callbacks.ode.per_replica=banana"], "callbacks.ode.per_replica must be true or false"),
        (["callbacks.results.plot=banana"], "callbacks.results.plot must be true or false"),
        (["measure.keep_trajectories=banana"], "measure.keep_trajectories must be true or false"),
        (["data.prefetch=banana"], "data.prefetch must be one of ['auto', true, false]"),
        (["measure.t_min=2"], "measure.t_min must be below t_max (the first measurement after t = 0 lies"),
        (["lr=step", "lr.milestones=[300,100]"], "lr.milestones must be a list of positive numbers, strictly incr"),
        (["lr=step", "lr.milestones=banana"], "lr.milestones must be a list of positive numbers"),
        (["trainer.devices=2"], "trainer.devices must be 1, 'auto' (with at most one GPU) or [i]"),
        (["trainer.max_epochs=3"], "trainer.max_epochs must be 1 (a run is one epoch, stopped at t_max), got 3"),
        (["trainer.num_sanity_val_steps=2"], "trainer.num_sanity_val_steps must be 0 (a run has no validation)"),
        (["+trainer.precision=banana"], "trainer: Precision 'banana' is invalid"),  # Lightning's own check
        (["callbacks.progress.line_seconds=0"], "callbacks.progress.line_seconds must be a finite number > 0"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*no-ODE region")
def test_each_input_of_the_issue_is_refused_in_one_line(overrides, message):
    assert _refusal(*overrides).startswith(message)


def test_a_cuda_request_without_cuda_is_refused_first():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    message = _refusal("trainer.accelerator=gpu", "callbacks.ode.mode=banana", "d=banana")  # before any other key
    assert message == "trainer.accelerator=gpu: no CUDA device here: use trainer.accelerator=cpu or auto"


def test_a_disabled_bar_leaves_the_progress_callback_out(tmp_path):
    cfg = _compose(*BASE, "trainer.enable_progress_bar=false", "~logger", output_dir=tmp_path)
    trainer = build_trainer(cfg)
    assert trainer.progress_bar_callback is None


def test_the_ode_scripts_keys_are_refused_in_one_line():
    keys = [key for key, _ in _settable_keys("ode", under="ode.")]
    assert {"ode.rtol", "ode.atol"} <= set(keys)
    for key in keys:
        for value in BAD_VALUES:
            with pytest.raises(ConfigError) as err:
                ode_settings(_overridden((), f"{key}={value}", name="ode"))
            assert _names(str(err.value), key) and "\n" not in str(err.value), (key, value, err.value)
    for override, message in (
        ("ode.mode=banana", "ode.mode must be one of ['finite', 'asymptotic'], got 'banana'"),
        ("ode.method=banana", "ode.method must be one of ['auto', "),
        ("+ode.banana=1", "ode.banana is not a setting of the ODE: ode.* takes mode, method, rtol"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            ode_settings(_compose(override, name="ode"))


# ----- time below one SGD step ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    d=st.integers(1, 10**5),
    theta=st.floats(-3, 1),
    t_max=st.floats(1e-2, 1e5, exclude_min=True),
    t_min=st.sampled_from([1e-3, 1e-2]),
)
def test_recorded_times_never_exceed_t_max_and_count_whole_steps(d, theta, t_max, t_min):
    tau = Scaling(theta=theta).steps_per_unit_time(d)
    if t_max * tau >= 2**53:
        return
    try:
        steps = measurement_steps(t_max, tau, t_min=t_min)
    except ConfigError as err:
        assert last_step(t_max, tau) == 0 and t_max * tau < 1, err  # refused exactly when no whole step fits
        assert "less than one" in str(err) and "theta" in str(err)
        return
    t = steps.astype(np.float64) / tau  # as results.npz records it (History.arrays)
    assert steps[0] == 0 and np.all(np.diff(steps) > 0)
    assert t[-1] <= t_max and steps[-1] == last_step(t_max, tau)
    assert (steps[-1] + 1) / tau > t_max  # the last whole step that fits: not one short
    inner = np.unique(np.rint(log_times(t_max, t_min)[:-1] * tau).astype(np.int64))  # the rounded log-spaced times
    assert np.array_equal(steps[:-1], inner[inner < steps[-1]])
    before = round(log_times(t_max, t_min)[-1] * tau)  # the last step until now: one more at most, past t_max
    assert before == steps[-1] or (before == steps[-1] + 1 and before / tau > t_max)


def test_the_default_run_keeps_its_measurement_grid():
    """d = 1000, tau = 1000, t_max = 100: the grid of every earlier default run, bit for bit."""
    steps = measurement_steps(100.0, 1000.0)
    assert np.array_equal(steps, np.unique(np.rint(log_times(100.0) * 1000.0).astype(np.int64)))
    assert steps[-1] == 100_000 and len(steps) == 42


def test_a_run_with_less_than_one_step_per_unit_of_time_ends_at_t_max(tmp_path):
    """The no-ODE region at κ = 1, δ = −2 (ϑ = 2(κ+δ) = −2): at d = 20 a unit of t is 1/20 of an
    SGD step, so t_max = 100 is 5 steps, and the recorded t stops at t_max (not past it)."""
    cfg = _compose(*QUIET, "d=20", "t_max=100", "kappa=1", "lr.delta=-2", "student.width=1", output_dir=tmp_path)
    with pytest.warns(UserWarning, match="no-ODE region"):
        module = train(cfg)
    t = np.load(tmp_path / "results.npz")["t"]
    assert module.sgd_steps == 5 and np.all(t <= 100.0) and math.isclose(t[-1], 100.0)


# ----- the scripts: exit status 2, one line, no traceback ---------------------------------------


def _script(tmp_path, script: str, *overrides: str, run_dir=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / script), f"hydra.run.dir={run_dir or tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_scripts_refuse_in_one_line_with_exit_status_2(tmp_path):
    cases = [
        ("train.py", ["callbacks.ode.mode=banana"], "callbacks.ode.mode", None),
        ("train.py", ["theta=-2"], "theta", None),
        ("train.py", ["teacher.second_layer=banana"], "teacher.second_layer", None),
        ("train.py", [], "hydra.run.dir", "/proc/forbidden/run"),  # an output folder that cannot be made
        ("ode.py", ["ode.rtol=-1"], "ode.rtol", None),
    ]
    if not torch.cuda.is_available():
        cases.append(("train.py", ["trainer.accelerator=gpu"], "trainer.accelerator", None))
    for script, overrides, key, run_dir in cases:
        proc = _script(tmp_path, script, *overrides, run_dir=run_dir)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, (overrides, proc.stderr[-2000:])
        assert len(errors) == 1 and _names(errors[0], key), (overrides, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr + proc.stdout
        assert not (tmp_path / "run" / "checkpoints").exists()
