"""From a composed Hydra config to a trained module: validate, instantiate, fit.

The flow is one way: ``scripts/*.py`` → ``conf/`` → this module → models and math.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .activations import get_activation
from .module import OnlineSGD
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
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    with warnings.catch_warnings():
        # Expected under manual analytic SGD and a ticket-only dataloader.
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
        trainer.fit(module, ckpt_path=cfg.get("resume"))
    return module
