"""From a composed Hydra config to the objects of a run: the module and its trainer.

Every key is checked by the constructor that consumes it (:mod:`phasesgd.infra.validation`);
this module only orders the construction so that the cheap checks and the memory estimate
come before anything large is allocated. Any bad value ends in one
:class:`~phasesgd.infra.validation.ConfigError`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks.progress import ProgressBar as LightningProgressBar
from omegaconf import DictConfig, OmegaConf

from ..infra.threads import use_threads
from ..infra.validation import (
    ConfigError,
    available_memory,
    require_bool,
    require_choice,
    require_equal,
    require_memory,
)
from ..sgd.chain import OverlapChain
from ..sgd.engines import Chain, choose_engine
from ..theory.activations import get_activation
from ..theory.scaling import student_width
from ..training.callbacks import end_of_run_order
from ..training.module import OnlineSGD
from .errors import config_errors

# The SGD step shares the machine with the data thread, so a second torch thread pays only
# for much larger steps than in the ODE: threads start this many times later than
# threads.PARALLEL_ABOVE (scripts/benchmark_sgd.py measures both sides of the choice).
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
    engine: str = "sgd"

    @property
    def sgd_numbers(self) -> float:
        """Numbers one batched step operation touches (SGD: the weights and one step's inputs;
        the chain: its coordinates), in units of :data:`SGD_THREAD_DISCOUNT`."""
        if self.engine == "chain":
            return self.replicas * self.p * self.chain_width / SGD_THREAD_DISCOUNT
        return self.replicas * self.d * (self.p + self.batch_size) / SGD_THREAD_DISCOUNT

    @property
    def chain_width(self) -> int:
        """The chain's coordinates per row at most (:meth:`OverlapChain.default_max_width`)."""
        return OverlapChain.default_max_width(self.p, self.k) + self.batch_size

    @property
    def ode_numbers(self) -> float:
        """Numbers of the I4 block of one drift evaluation, O(R p²(p+k)²) (docs/theory.md §4)."""
        return self.replicas * self.p**2 * (self.p + self.k) ** 2

    def bytes_needed(self) -> tuple[float, float]:
        """(weights, data) bytes at the peak: the float64 draw of the initial weights, the
        weights, their copy at the start of a chunk and the checkpoint's buffer; three
        data chunks (the one in use, the one drawn in the background, a transposed copy)."""
        if self.engine == "chain":  # the coordinates, their copies, and the numbers drawn ahead
            drawn = (self.replicas * self.p + self.k) * self.d * 24 if self.draws_weights else 0
            return self.replicas * self.p * self.chain_width * 8 * 4 + drawn, 3 * OverlapChain.block_numbers * 8
        weights = self.replicas * self.p * self.d
        chunk = self.replicas * self.chunk_steps * self.batch_size * (self.d + 1)
        return weights * (16 + 3 * self.itemsize) + self.k * self.d * 16, 3 * chunk * self.itemsize

    @property
    def draws_weights(self) -> bool:
        """Whether the run draws d-dimensional initial weights (always for SGD; the chain only
        while they are small, :meth:`~phasesgd.sgd.engines.Chain.draws_weights`)."""
        return self.engine == "sgd" or Chain.draws_weights(self.replicas, self.p, self.k, self.d)


def run_size(cfg: DictConfig) -> RunSize | None:
    """The sizes of the run ``cfg`` describes, or None where a value is not valid yet (its
    constructor then names the key)."""
    values = {
        key: OmegaConf.select(cfg, key)
        for key in (
            "d",
            "student.width",
            "teacher.width",
            "replicas",
            "data.chunk_steps",
            "data.batch_size",
            "kappa",
            "dtype",
            "engine.name",
        )
    }
    ints = [
        values[k] for k in ("d", "student.width", "teacher.width", "replicas", "data.chunk_steps", "data.batch_size")
    ]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ints) or values["dtype"] not in (
        "float32",
        "float64",
    ):
        return None
    d, p0, k, replicas, chunk_steps, batch_size = ints
    try:
        p = student_width(p0, d, values["kappa"])
    except OverflowError:  # d^κ beyond floats: the memory check refuses it
        p = math.inf
    itemsize = 4 if values["dtype"] == "float32" else 8
    engine = values["engine.name"] or "sgd"
    if math.isfinite(p):
        engine = choose_engine(engine, p, k, d)
    return RunSize(d, p, k, replicas, chunk_steps, batch_size, itemsize, engine)


ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def run_device(cfg: DictConfig) -> torch.device:
    """The device the trainer will pick (``trainer.accelerator``); a CUDA request on a
    machine without CUDA is refused here, before anything else."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    require_choice("trainer.accelerator", accelerator, ACCELERATORS)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator}: no CUDA device here: use trainer.accelerator=cpu or auto"
        )
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
    require_memory(
        weights + data, available_memory(device), what, "lower d, kappa, student.width, replicas or data.chunk_steps"
    )


def build_module(cfg: DictConfig, work: Callable[[RunSize], float] = lambda size: size.sgd_numbers) -> OnlineSGD:
    """Teacher, student, data stream, schedule and measurement, composed into the module;
    torch's thread count is set from ``work(size)`` (:func:`phasesgd.infra.threads.use_threads`)."""
    with config_errors():
        return _build_module(cfg, work)


def _build_module(cfg: DictConfig, work: Callable[[RunSize], float]) -> OnlineSGD:
    device = run_device(cfg)
    for key in ("skip_finished", "verbose"):  # read by the app itself (train, the console)
        if OmegaConf.select(cfg, key) is not None:
            require_bool(key, OmegaConf.select(cfg, key))
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
        check_memory(size, device)
        use_threads(work(size), requested=cfg.get("cpu_threads"))
    engine = size.engine if size is not None else choose_engine(OmegaConf.select(cfg, "engine.name") or "sgd", 1, 1, 1)
    # The chain's state is float64 whatever dtype says, and at large d it has no d-dimensional rows.
    networks = {} if engine == "sgd" else {"dtype": "float64", "draw_weights": size is None or size.draws_weights}
    teacher, student = instantiate(cfg.teacher, **networks), instantiate(cfg.student, **networks)
    module = instantiate(cfg.module, teacher=teacher, student=student, engine=engine, **parts)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if "engine" in module.run_config:  # the engine that ran, 'auto' resolved
        module.run_config["engine"]["name"] = module.run_config["module"]["engine"] = engine
    return module


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The Lightning trainer with the config's callbacks, in their end-of-run order
    (:func:`~phasesgd.training.callbacks.end_of_run_order`), and logger. Lightning's own keys
    are checked first (:func:`check_trainer`), each callback's by its constructor."""
    with config_errors():
        check_trainer(cfg)
        callbacks = end_of_run_order(build_callbacks(cfg))
        if "default_hp_metric" in (cfg.get("logger") or {}):  # Lightning would take any string for true
            require_bool("logger.default_hp_metric", cfg.logger.default_hp_metric)
        logger = instantiate(cfg.logger) if cfg.get("logger") else False
        return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, **overrides)


def check_trainer(cfg: DictConfig) -> None:
    """The ``trainer.*`` keys for which the module supports one value: it runs in one process
    on one device (the replicas are batched on it), in one epoch that stops at t_max, and has
    no validation loop. Lightning checks its other keys itself (named ``trainer: …``)."""
    trainer = cfg.get("trainer") or {}
    device = run_device(cfg)
    if "devices" in trainer:
        devices = trainer.devices
        index = devices[0] if OmegaConf.is_list(devices) and len(devices) == 1 else None
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        one = (
            (devices == 1 and type(devices) is int)
            or (devices == "auto" and gpus <= 1)
            or (type(index) is int and 0 <= index < gpus)
        )
        if not one:
            raise ConfigError(
                f"trainer.devices must be 1, 'auto' (with at most one GPU) or [i] (GPU i; {gpus} GPUs here): "
                f"a run uses one device, with its replicas batched on it, got {devices!r}"
            )
    if "max_epochs" in trainer:
        require_equal("trainer.max_epochs", trainer.max_epochs, 1, "a run is one epoch, stopped at t_max")
    if "num_sanity_val_steps" in trainer:
        require_equal("trainer.num_sanity_val_steps", trainer.num_sanity_val_steps, 0, "a run has no validation")
    for key in ("enable_checkpointing", "enable_model_summary", "enable_progress_bar"):
        if key in trainer:
            require_bool(f"trainer.{key}", trainer[key])


def build_callbacks(cfg: DictConfig) -> Iterator[L.Callback]:
    """The callbacks of ``cfg.callbacks``, each told its own key (``callbacks.<name>``) where
    its constructor takes a ``config_key``, so that a refused setting is named in full. With
    ``trainer.enable_progress_bar=false`` the progress bars are left out (Lightning refuses them)."""
    bar_off = OmegaConf.select(cfg, "trainer.enable_progress_bar") is False
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        try:
            target = get_class(node._target_)
        except Exception:  # noqa: BLE001 - instantiate below reports a bad _target_ in its own words
            yield instantiate(node)
            continue
        if bar_off and issubclass(target, LightningProgressBar):
            continue
        takes_key = "config_key" in inspect.signature(target).parameters
        yield instantiate(node, **({"config_key": f"callbacks.{name}"} if takes_key else {}))
