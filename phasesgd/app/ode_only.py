"""``scripts/ode.py``: the ODE of the run a config describes, alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import yaml
from omegaconf import DictConfig

from ..infra.io import save_npz
from ..infra.validation import ConfigError, prefixed, require_choice
from ..ode import SolverOptions, solve_ode
from ..ode.drift import MODES
from ..theory.order_parameters import Overlaps
from ..viz.plotting import plot_risk, run_title
from .build import build_module, run_device
from .errors import config_errors
from .initial_conditions import load_initial_conditions


def ode_settings(cfg: DictConfig) -> tuple[str, SolverOptions]:
    """``ode.mode`` and the solver of the ``ode.*`` keys (any field of
    :class:`~phasesgd.ode.SolverOptions`), checked and named in full (``ode.rtol``)."""
    settings = dict(cfg.get("ode") or {})
    mode = settings.pop("mode", "asymptotic")
    require_choice("ode.mode", mode, MODES)
    fields = [field.name for field in dataclasses.fields(SolverOptions)]
    for key in settings:
        if key not in fields:
            raise ConfigError(f"ode.{key} is not a setting of the ODE: ode.* takes mode, {', '.join(fields)}")
    with prefixed("ode"):
        return mode, SolverOptions(**settings)


def solve_from_config(cfg: DictConfig):
    """The ODE of the run that ``cfg`` describes, from ``cfg.init`` (an .npz with Q0, M0,
    P, checked by :func:`~phasesgd.app.initial_conditions.load_initial_conditions`) or from the
    overlaps of freshly drawn weights; writes ``ode.npz`` and ``risk.png`` into
    ``cfg.output_dir``. Returns the :class:`~phasesgd.ode.ODESolution`."""
    with config_errors():
        run_device(cfg)  # the accelerator first, as in a training run
        mode, solver = ode_settings(cfg)
    module = build_module(cfg, work=lambda size: size.ode_numbers)
    if cfg.get("init"):
        start = Overlaps(*load_initial_conditions(cfg.init, p=module.student.width, k=module.teacher.width))
    else:
        now = module.overlaps()
        start = Overlaps(now.Q.double().numpy(), now.M.double().numpy(), now.P.double().numpy())
    P = start.P
    t_eval = module.measure_steps / module.steps_per_unit
    with config_errors():
        physics = module.ode_physics()  # a subclass: the quadrature of its field_step
    if physics.field_rule is not None and mode != "finite":
        raise ConfigError(f"ode.mode: {type(module.student).__name__} has the finite-size ODE only, got {mode!r}")
    sol = solve_ode(start, physics, t_eval, mode=mode, solver=solver)
    config_text = yaml.safe_dump(module.run_config, sort_keys=False)
    arrays = {"t": sol.t, "risk": sol.risk, "Q": sol.Q, "M": sol.M, "P": np.asarray(P), "config": np.array(config_text)}
    if sol.a is not None:
        arrays["a"] = sol.a
    save_npz(f"{cfg.output_dir}/ode.npz", **arrays)
    risk = np.atleast_2d(sol.risk)
    title = run_title(module.physics(), module.student.width, module.teacher.width) + f"; {sol.mode} ODE alone"
    plot_risk(
        f"{cfg.output_dir}/risk.png", sol.t, risk, risk, title=title, simulation=False, ode_label=f"{sol.mode} ODE"
    )
    return sol
