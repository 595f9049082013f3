"""Atomic checkpoints of the module's own SGD state."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L

from ...infra.io import atomic_path
from ...infra.validation import require_at_least_or_null, require_positive
from ..module import DivergenceError, OnlineSGD

log = logging.getLogger(__name__)


class SGDCheckpoint(L.Callback):
    """Saves ``last.ckpt`` in ``dirpath`` every ``every_seconds`` of wall time or every
    ``every_steps`` SGD steps, whichever comes first (at the end of a chunk of steps),
    at the end of the run and when it is interrupted (Ctrl-C, SIGTERM, an error other
    than divergence), written atomically (tmp file, then rename).

    An interruption inside a chunk first rewinds the module to the chunk's start
    (:meth:`OnlineSGD.rewind_unfinished_chunk`), so every checkpoint resumes exactly.
    A failure before this fit ran any SGD step (loading, start-up) saves nothing: the
    checkpoint of the run being resumed stays as it was. Saving on an interruption never
    raises, so that it cannot hide the interruption's own error.

    Lightning's ModelCheckpoint counts optimizer steps, which stay at zero under this
    module's manual SGD, and writes in place. ``config_key`` is its key in the config
    (``callbacks.checkpoint``), named by a refused value.
    """

    # last of the end-of-run sequence (phasesgd.training.callbacks): a failed results write must not skip it
    stage = 4

    def __init__(
        self,
        dirpath: str = "checkpoints",
        every_seconds: float = 60.0,
        every_steps: int | None = None,
        *,
        config_key: str = "callbacks.checkpoint",
    ) -> None:
        require_positive(f"{config_key}.every_seconds", every_seconds)
        require_at_least_or_null(f"{config_key}.every_steps", every_steps, 1)
        self.dirpath = Path(dirpath)
        self.every_seconds, self.every_steps = float(every_seconds), every_steps
        self._last_time, self._last_steps = time.monotonic(), 0

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        with atomic_path(self.last_path) as tmp:
            trainer.save_checkpoint(tmp)
        self._last_time, self._last_steps = time.monotonic(), pl_module.sgd_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        self._last_time, self._last_steps = time.monotonic(), pl_module.sgd_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: OnlineSGD, *args: Any) -> None:
        steps_due = self.every_steps is not None and pl_module.sgd_steps - self._last_steps >= self.every_steps
        if steps_due or time.monotonic() - self._last_time >= self.every_seconds:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        self.save(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: OnlineSGD, exception: BaseException) -> None:
        pl_module.rewind_unfinished_chunk()
        if isinstance(exception, DivergenceError) or not pl_module.advanced_this_fit:
            return  # a diverged state is not worth resuming; before any step there is nothing new
        try:
            self.save(trainer, pl_module)
        except Exception as err:  # keep the interruption's own error the one that is raised
            log.error("could not write the checkpoint %s: %s: %s", self.last_path, type(err).__name__, err)
        else:
            log.info(
                "checkpoint at t=%.4g (SGD step %d): resume with resume=%s",
                pl_module.t,
                pl_module.sgd_steps,
                self.last_path,
            )
