"""From a composed Hydra config to a trained module: validate, instantiate, fit.

The flow is one way: ``scripts/*.py`` → ``conf/`` → this module → models and math.
Every key is checked by the constructor that consumes it (:mod:`phasesgd.infra.validation`);
this module only orders the construction so that the cheap checks, the memory estimate
and a resume's checkpoint are all checked before anything large is allocated, computed
or written. Any bad value ends in one :class:`~phasesgd.infra.validation.ConfigError`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from hydra.errors import ConfigCompositionException, InstantiationException, OverrideParseException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..infra.console import is_verbose, quiet_console
from ..infra.io import remove_stale_temporaries, save_npz
from ..infra.threads import use_threads
from ..infra.validation import ConfigError, available_memory, require_memory
from ..ode import SolverOptions, solve_ode
from ..theory.activations import get_activation
from ..theory.identity import physics_differences
from ..theory.order_parameters import Overlaps
from ..theory.scaling import student_width
from ..training.callbacks import SGDCheckpoint
from ..training.module import OnlineSGD
from ..training.summary import is_finished
from ..viz.plotting import plot_risk, run_title
from .initial_conditions import load_initial_conditions
from .resume import check_resume

log = logging.getLogger(__name__)

# The SGD step shares the machine with the data thread, so a second torch thread pays only
# for much larger steps than in the ODE: scripts/benchmark_sgd.py measured 2 threads 2.6-8x
# slower than 1 for R*p*d up to 8e6 numbers on 2 cores. Threads start 16x later than
# threads.PARALLEL_ABOVE, at about 1.7e7 numbers per step.
SGD_THREAD_DISCOUNT = 16


@dataclass(frozen=True)
class RunSize:
    """The sizes that set a run's memory and the cost of its tensor operations."""

    d: int
    p: int
    k: int
    replicas: int
    chunk_steps: int
    batch_size: int
    itemsize: int

    @property
    def sgd_numbers(self) -> float:
        """Numbers one batched SGD-step operation touches (the weights and one step's inputs),
        in units of :data:`SGD_THREAD_DISCOUNT`."""
        return self.replicas * self.d * (self.p + self.batch_size) / SGD_THREAD_DISCOUNT

    @property
    def ode_numbers(self) -> float:
        """Numbers of the I4 block of one drift evaluation, O(R p²(p+k)²) (docs/theory.md §4)."""
        return self.replicas * self.p**2 * (self.p + self.k) ** 2

    def bytes_needed(self) -> tuple[float, float]:
        """(weights, data) bytes at the peak: the float64 draw of the initial weights, the
        weights, their copy at the start of a chunk and the checkpoint's buffer; three
        data chunks (the one in use, the one drawn in the background, a transposed copy)."""
        weights = self.replicas * self.p * self.d
        chunk = self.replicas * self.chunk_steps * self.batch_size * (self.d + 1)
        return weights * (16 + 3 * self.itemsize) + self.k * self.d * 16, 3 * chunk * self.itemsize


def run_size(cfg: DictConfig) -> RunSize | None:
    """The sizes of the run ``cfg`` describes, or None where a value is not valid yet (its
    constructor then names the key)."""
    values = {
        key: OmegaConf.select(cfg, key)
        for key in ("d", "student.width", "teacher.width", "replicas", "data.chunk_steps", "data.batch_size", "kappa", "dtype")
    }
    ints = [values[k] for k in ("d", "student.width", "teacher.width", "replicas", "data.chunk_steps", "data.batch_size")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ints) or values["dtype"] not in ("float32", "float64"):
        return None
    d, p0, k, replicas, chunk_steps, batch_size = ints
    try:
        p = student_width(p0, d, values["kappa"])
    except OverflowError:  # d^κ beyond floats: the memory check refuses it
        p = math.inf
    return RunSize(d, p, k, replicas, chunk_steps, batch_size, 4 if values["dtype"] == "float32" else 8)


def run_device(cfg: DictConfig) -> torch.device:
    """The device the trainer will pick (``trainer.accelerator``)."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def check_memory(size: RunSize, device: torch.device) -> None:
    """Refuse a run whose weights and data chunks do not fit the device's free memory."""
    weights, data = size.bytes_needed()
    what = (
        f"d={size.d}, p={size.p}, replicas={size.replicas}, data.chunk_steps={size.chunk_steps}, "
        f"data.batch_size={size.batch_size} (weights {weights / 1e9:.3g} GB, data chunks {data / 1e9:.3g} GB)"
    )
    require_memory(weights + data, available_memory(device), what, "lower d, kappa, student.width, replicas or data.chunk_steps")


@contextmanager
def config_errors() -> Iterator[None]:
    """Turn the ways a bad config surfaces into one :class:`ConfigError` line: a missing
    value (``???``) or a broken interpolation, and a constructor's check raised inside
    Hydra's ``instantiate`` (which wraps it in an ``InstantiationException``)."""
    try:
        yield
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(str(cause).splitlines()[0]) from None
        raise


def run_app(app: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` app so that a config Hydra cannot compose (an unknown key or
    option, a malformed override) is reported like every other bad value: one line on
    stderr, exit status 2. ``HYDRA_FULL_ERROR=1`` set by the user keeps Hydra's traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return app()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing several lines and exiting
    try:
        return app()
    except (ConfigCompositionException, OverrideParseException, OmegaConfBaseException) as err:
        text = str(err).split("Config search path:")[0]
        print(f"error: {' '.join(line.strip() for line in text.splitlines() if line.strip())}", file=sys.stderr)
        sys.exit(2)


def build_module(cfg: DictConfig, work: Callable[[RunSize], float] = lambda size: size.sgd_numbers) -> OnlineSGD:
    """Teacher, student, data stream, schedule and measurement, composed into the module;
    torch's thread count is set from ``work(size)`` (:func:`phasesgd.infra.threads.use_threads`)."""
    with config_errors():
        return _build_module(cfg, work)


def _build_module(cfg: DictConfig, work: Callable[[RunSize], float]) -> OnlineSGD:
    for key in ("teacher.activation", "student.activation"):
        try:
            get_activation(OmegaConf.select(cfg, key))
        except ValueError as err:
            raise ConfigError(f"{key}: {str(err).splitlines()[0].removeprefix('activation: ')}") from None
    module_class = get_class(cfg.module._target_)
    module_class.check_arguments(**{k: v for k, v in cfg.module.items() if k != "_target_"})
    parts = {name: instantiate(cfg[name]) for name in ("data", "lr", "measure")}  # small: checked first
    size = run_size(cfg)
    if size is not None:
        check_memory(size, run_device(cfg))
        use_threads(work(size), requested=cfg.get("cpu_threads"))
    module = instantiate(cfg.module, teacher=instantiate(cfg.teacher), student=instantiate(cfg.student), **parts)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def solve_from_config(cfg: DictConfig):
    """The ODE of the run that ``cfg`` describes, from ``cfg.init`` (an .npz with Q0, M0,
    P, checked by :func:`~phasesgd.app.initial_conditions.load_initial_conditions`) or from the
    overlaps of freshly drawn weights; writes ``ode.npz`` and ``risk.png`` into
    ``cfg.output_dir``. Returns the :class:`~phasesgd.ode.ODESolution`."""
    module = build_module(cfg, work=lambda size: size.ode_numbers)
    settings = dict(cfg.ode)
    mode = settings.pop("mode")
    if cfg.get("init"):
        start = Overlaps(*load_initial_conditions(cfg.init, p=module.student.width, k=module.teacher.width))
    else:
        now = module.overlaps()
        start = Overlaps(now.Q.double().numpy(), now.M.double().numpy(), now.P.double().numpy())
    P = start.P
    t_eval = module.measure_steps / module.steps_per_unit
    sol = solve_ode(start, module.physics(), t_eval, mode=mode, solver=SolverOptions(**settings))
    config_text = yaml.safe_dump(module.run_config, sort_keys=False)
    arrays = {"t": sol.t, "risk": sol.risk, "Q": sol.Q, "M": sol.M, "P": np.asarray(P), "config": np.array(config_text)}
    if sol.a is not None:
        arrays["a"] = sol.a
    save_npz(f"{cfg.output_dir}/ode.npz", **arrays)
    risk = np.atleast_2d(sol.risk)
    title = run_title(module.physics(), module.student.width, module.teacher.width) + f"; {sol.mode} ODE alone"
    plot_risk(f"{cfg.output_dir}/risk.png", sol.t, risk, risk, title=title, simulation=False, ode_label=f"{sol.mode} ODE")
    return sol


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The Lightning trainer with the config's callbacks (the checkpoint last, so that the
    results are written before it) and logger."""
    with config_errors():
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        callbacks.sort(key=lambda c: isinstance(c, SGDCheckpoint))
        logger = instantiate(cfg.logger) if cfg.get("logger") else False
        return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **overrides)


def train(cfg: DictConfig) -> OnlineSGD | None:
    """Run one experiment; returns the trained module (results are on disk), or None
    when ``skip_finished`` is set and the output directory holds this run finished.

    Everything that can be refused is refused before the output folder is touched: the
    config (:class:`~phasesgd.infra.validation.ConfigError`) and, with ``resume``, the
    checkpoint (:func:`phasesgd.app.resume.check_resume`).
    """
    with config_errors():
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
            f"output_dir: {output_dir} holds a run of other physics ({'; '.join(differences)}), which this run would overwrite; "
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
