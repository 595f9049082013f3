"""Atomic checkpoints of the module's own SGD state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L

from ..io import atomic_path
from ..module import DivergenceError, OnlineSGD


class SGDCheckpoint(L.Callback):
    """Saves ``last.ckpt`` in ``dirpath`` every ``every_minutes`` of wall time, at the end
    of the run and when it is interrupted, written atomically (tmp file, then rename).

    Lightning's ModelCheckpoint counts optimizer steps, which stay at zero under this
    module's manual SGD, and writes in place; resuming (``resume=<path>``) continues the
    exact trajectory since the module checkpoints its step counter and data generators.
    """

    def __init__(self, dirpath: str = "checkpoints", every_minutes: float = 10.0) -> None:
        self.dirpath = Path(dirpath)
        self.every_seconds = 60.0 * every_minutes
        self._last = time.monotonic()

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: L.Trainer) -> None:
        with atomic_path(self.last_path) as tmp:
            trainer.save_checkpoint(tmp)
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if time.monotonic() - self._last >= self.every_seconds:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: OnlineSGD, exception: BaseException) -> None:
        if not isinstance(exception, DivergenceError):  # a diverged state is not worth resuming
            self.save(trainer)
