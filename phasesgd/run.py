"""From a composed Hydra config to a trained module: validate, instantiate, fit.

The flow is one way: ``scripts/*.py`` → ``conf/`` → this module → models and math.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .activations import get_activation
from .console import is_verbose, quiet_console
from .io import save_npz
from .module import OnlineSGD
from .ode import solve_ode
from .plotting import plot_risk
from .summary import config_hash, is_finished
from .validation import require_at_least, require_nonnegative, require_positive

log = logging.getLogger(__name__)

# (config key, check): refused before anything is instantiated or computed.
CHECKS = (
    ("d", require_at_least, 1),
    ("replicas", require_at_least, 1),
    ("replica_offset", require_at_least, 0),
    ("seed", require_at_least, 0),
    ("teacher.width", require_at_least, 1),
    ("student.width", require_at_least, 1),
    ("teacher.noise", require_nonnegative, None),
    ("lr.gamma0", require_positive, None),
    ("t_max", require_positive, None),
)


def validate_config(cfg: DictConfig) -> None:
    """Refuse out-of-range values and unknown activations, naming the key."""
    for key, check, bound in CHECKS:
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        check(key, value, bound) if bound is not None else check(key, value)
    for key in ("teacher.activation", "student.activation"):
        name = OmegaConf.select(cfg, key)
        try:
            get_activation(name)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None


def build_module(cfg: DictConfig) -> OnlineSGD:
    """Teacher, student, data stream, schedule and measurement, composed into the module."""
    validate_config(cfg)
    module = instantiate(
        cfg.module,
        teacher=instantiate(cfg.teacher),
        student=instantiate(cfg.student),
        data=instantiate(cfg.data),
        lr=instantiate(cfg.lr),
        measure=instantiate(cfg.measure),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def solve_from_config(cfg: DictConfig):
    """The ODE of the run that ``cfg`` describes, from ``cfg.init`` (an .npz with Q0, M0,
    P) or from the overlaps of freshly drawn weights; writes ``ode.npz`` and ``risk.png``
    into ``cfg.output_dir``. Returns the :class:`~phasesgd.ode.ODESolution`."""
    module = build_module(cfg)
    args = module.physics().ode_arguments() | dict(cfg.ode)
    if cfg.get("init"):
        with np.load(cfg.init) as init:
            Q0, M0, P = init["Q0"], init["M0"], init["P"]
            args["second_layer"] = init["a0"] if "a0" in init else None  # a = 1 unless the file says
    else:
        Q0, M0, P = (x.double().numpy() for x in module.overlaps())
    t_eval = module.measure_steps / module.steps_per_unit
    sol = solve_ode(Q0, M0, P, t_eval=t_eval, **args)
    config_text = yaml.safe_dump(module.run_config, sort_keys=False)
    arrays = {"t": sol.t, "risk": sol.risk, "Q": sol.Q, "M": sol.M, "P": np.asarray(P), "config": np.array(config_text)}
    if sol.a is not None:
        arrays["a"] = sol.a
    save_npz(f"{cfg.output_dir}/ode.npz", **arrays)
    risk = np.atleast_2d(sol.risk)
    plot_risk(f"{cfg.output_dir}/risk.png", sol.t, risk, risk, title=f"{sol.mode} ODE, {sol.region.value} region", simulation=False)
    return sol


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **overrides)


def train(cfg: DictConfig) -> OnlineSGD | None:
    """Run one experiment; returns the trained module (results are on disk), or None
    when ``skip_finished`` is set and the output directory holds this run finished."""
    if cfg.get("skip_finished") and cfg.get("resume") is None:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if is_finished(cfg.output_dir, config_hash(resolved)):
            log.info("skipping %s: a finished run of this config is there", cfg.output_dir)
            return None
    if cfg.get("cpu_threads"):
        require_at_least("cpu_threads", cfg.cpu_threads, 1)
        torch.set_num_threads(cfg.cpu_threads)
    module = build_module(cfg)
    quiet_console(is_verbose(cfg))
    trainer = build_trainer(cfg)
    with warnings.catch_warnings():
        # Expected under manual analytic SGD and a ticket-only dataloader.
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
        trainer.fit(module, ckpt_path=cfg.get("resume"))
    return module
