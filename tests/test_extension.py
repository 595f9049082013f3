"""A new architecture is a subclass selected by `_target_`, with no file of phasesgd edited."""

from __future__ import annotations

import sys

import numpy as np
from conftest import QUIET
from students import USER_MODULE

from phasesgd.app.train import train


def test_user_subclass_selected_by_target(make_config, tmp_path, monkeypatch):
    (tmp_path / "my_students.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = [*QUIET, "d=100", "t_max=2", "callbacks.order_parameters=null", "skip_finished=false"]
    plain = train(make_config(*base, output_dir=tmp_path / "plain"))
    clipped = train(
        make_config(
            *base, "student._target_=my_students.ClippedStudent", "+student.clip=1e-3", output_dir=tmp_path / "clipped"
        )
    )
    assert type(clipped.student).__name__ == "ClippedStudent" and clipped.student.clip == 1e-3
    # Clipping the error at 1e-3 slows learning: the risk falls less than with plain SGD.
    assert clipped.history.risk[-1].mean() > plain.history.risk[-1].mean()
    assert np.load(tmp_path / "clipped" / "results.npz")["risk"].shape[1] == len(clipped.history)
    sys.modules.pop("my_students", None)


def test_trained_readout_preset_moves_the_second_layer(make_config, tmp_path):
    module = train(
        make_config(
            *QUIET,
            "student=trained_readout",
            "student.second_layer_lr=4.0",
            "d=100",
            "t_max=2",
            "callbacks.order_parameters=null",
        )
    )
    a0, a = module.history.a[0], module.history.a[-1]
    assert np.all(a0 == 1.0) and np.abs(a - 1.0).max() > 1e-3


def test_a_field_space_student_and_its_weight_space_twin_take_the_same_steps(make_config, tmp_path, monkeypatch):
    """The clipped student defined by its field_step equals, bit for bit, the same student
    written as a weight-space sgd_step; only the first is defined in field space."""
    (tmp_path / "my_students.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = [*QUIET, "d=60", "t_max=1", "replicas=2", "callbacks.order_parameters=null", "callbacks.ode=null"]
    runs = {}
    for name in ("ClippedStudent", "WeightSpaceClippedStudent"):
        overrides = [*base, f"student._target_=my_students.{name}", "+student.clip=0.01"]
        runs[name] = train(make_config(*overrides, output_dir=tmp_path / name))
    field, weight = runs["ClippedStudent"], runs["WeightSpaceClippedStudent"]
    assert np.array_equal(field.student.weight.numpy(), weight.student.weight.numpy())
    assert type(field.student).steps_in_field_space() and not type(weight.student).steps_in_field_space()
    sys.modules.pop("my_students", None)
