"""``train(cfg)``: one run from a composed config, apart from ``@hydra.main``.

The flow is one way: ``scripts/*.py`` → ``conf/`` → :mod:`.build` → models and maths.
Everything that can be refused is refused before the output folder is touched: the config,
a folder holding a run of other physics, and a resume's checkpoint.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from omegaconf import DictConfig, OmegaConf

from ..infra.console import is_verbose, quiet_console
from ..infra.io import remove_stale_temporaries
from ..infra.validation import ConfigError, require_bool
from ..theory.identity import physics_differences
from ..training.callbacks import SGDCheckpoint
from ..training.module import OnlineSGD
from ..training.summary import is_finished
from .build import build_module, build_trainer
from .errors import config_errors
from .resume import check_resume

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> OnlineSGD | None:
    """Run one experiment; returns the trained module (results are on disk), or None
    when ``skip_finished`` is set and the output directory holds this run finished.

    Everything that can be refused is refused before the output folder is touched: the
    config (:class:`~phasesgd.infra.validation.ConfigError`) and, with ``resume``, the
    checkpoint (:func:`phasesgd.app.resume.check_resume`).
    """
    with config_errors():
        require_bool("skip_finished", cfg.get("skip_finished"))
        if cfg.get("skip_finished") and cfg.get("resume") is None:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            if is_finished(cfg.output_dir, resolved):
                log.info("skipping %s: a finished run of this config is there", cfg.output_dir)
                return None
        module = build_module(cfg)
        refuse_other_run(cfg.output_dir, module.run_config)
        quiet_console(is_verbose(cfg))
        trainer = build_trainer(cfg)
        resume = resume_path(cfg, module, trainer)
    for folder in (cfg.output_dir, f"{cfg.output_dir}/checkpoints"):
        remove_stale_temporaries(folder)  # left by a killed earlier attempt at this run
    with warnings.catch_warnings():
        # Expected under manual analytic SGD and a ticket-only dataloader.
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned `None`.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
        trainer.fit(module, ckpt_path=resume)
    return module


def refuse_other_run(output_dir: str, requested: dict[str, Any]) -> None:
    """Refuse to write into a folder that holds a run of other physics (its ``config.yaml``):
    its results and checkpoint would be overwritten. A run of the same physics there (a
    longer ``t_max`` included) is continued or skipped instead (:func:`resume_path`)."""
    stored_path = Path(output_dir) / "config.yaml"
    if not stored_path.is_file():
        return
    try:
        stored = yaml.safe_load(stored_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"output_dir: {stored_path} is not readable ({err}); choose another output folder") from None
    differences = physics_differences(stored if isinstance(stored, dict) else {}, requested)
    if differences:
        raise ConfigError(
            f"output_dir: {output_dir} holds a run of other physics ({'; '.join(differences)}), "
            "which this run would overwrite; "
            "choose another hydra.run.dir (or hydra.sweep.dir), or move that run away"
        )


def resume_path(cfg: DictConfig, module: OnlineSGD, trainer: L.Trainer) -> str | None:
    """The checkpoint to continue from: ``resume`` if given (checked, else refused); else,
    with ``skip_finished``, the checkpoint that an interrupted run of the same physics left
    in this output folder — so that a sweep started again continues each interrupted point
    where it stopped — or None (a fresh start). A checkpoint there of another run is refused,
    not overwritten."""
    if cfg.get("resume") is not None:
        check_resume(cfg.resume, module.run_config, module.state_dict())
        return str(cfg.resume)
    saver = next((c for c in trainer.callbacks if isinstance(c, SGDCheckpoint)), None)
    if not cfg.get("skip_finished") or saver is None or not saver.last_path.is_file():
        return None
    try:
        check_resume(saver.last_path, module.run_config, module.state_dict())
    except ConfigError as err:  # a checkpoint of another run: never written over
        raise ConfigError(
            f"output_dir: {cfg.output_dir} holds a checkpoint that this run cannot continue ({err}); "
            "choose another hydra.run.dir (or hydra.sweep.dir), or move that run away"
        ) from None
    log.info("continuing the interrupted run in %s from %s", cfg.output_dir, saver.last_path)
    return str(saver.last_path)
