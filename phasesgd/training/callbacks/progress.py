"""The progress bar of a run, counting SGD steps."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from ...infra.validation import require_at_least, require_bool, require_positive
from ..module import OnlineSGD


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar over the run's SGD steps ν up to ν_max (not over its chunks,
    whose sizes vary with the log-spaced measurements), so that its rate and ETA are per
    SGD step; the postfix shows t / t_max and the replica-mean risk of the last measurement.
    A resumed run starts the bar where it stands, and its rate counts the new steps only.

    When stdout is not a terminal (a log file, a pipe, a SLURM job), the bar is not redrawn
    with carriage returns: the same text is printed as a plain line at most every
    ``line_seconds`` of wall time, and once when the run reaches t_max.

    ``config_key`` is the bar's key in the config (``callbacks.progress``), named by a refused value.
    """

    # its place in the end-of-run sequence (phasesgd.training.callbacks): closes the bar before anything else logs
    stage = 0

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        line_seconds: float = 10.0,
        *,
        config_key: str = "callbacks.progress",
    ) -> None:
        require_at_least(f"{config_key}.refresh_rate", refresh_rate, 0)
        require_at_least(f"{config_key}.process_position", process_position, 0)
        require_bool(f"{config_key}.leave", leave)
        require_positive(f"{config_key}.line_seconds", line_seconds)
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.line_seconds = float(line_seconds)
        self.lines = False  # plain lines instead of a redrawn bar: set when training starts
        self._started = self._last_line = 0.0
        self._initial = 0

    def init_train_tqdm(self) -> Tqdm:
        module: OnlineSGD = self.trainer.lightning_module
        stream = sys.stdout
        self.lines = not (hasattr(stream, "isatty") and stream.isatty())
        self._started = self._last_line = time.monotonic()
        self._initial = module.sgd_steps
        return Tqdm(
            desc="SGD",
            total=int(module.measure_steps[-1]),
            initial=module.sgd_steps,
            unit="step",
            unit_scale=True,
            position=2 * self.process_position,
            disable=self.is_disabled or self.lines,
            leave=True,
            dynamic_ncols=True,
            file=stream,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """The bar of :meth:`init_train_tqdm` spans the whole run: nothing to reset per epoch."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: OnlineSGD, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if self.lines:
            now = time.monotonic()
            if self.is_enabled and (trainer.should_stop or now - self._last_line >= self.line_seconds):
                print(self.line(trainer, pl_module), file=sys.stdout, flush=True)
                self._last_line = now
            return
        if self._should_update(batch_idx + 1, -1) or trainer.should_stop:
            bar.n = pl_module.sgd_steps
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def line(self, trainer: L.Trainer, pl_module: OnlineSGD) -> str:
        """The bar's text now, as one line (``SGD:  45%|####5     | 45.0k/100k [00:10<00:12, …, t=45/100]``)."""
        postfix = ", ".join(f"{key}={value}" for key, value in self.get_metrics(trainer, pl_module).items())
        return Tqdm.format_meter(
            pl_module.sgd_steps,
            int(pl_module.measure_steps[-1]),
            time.monotonic() - self._started,
            prefix="SGD",
            ascii=True,
            unit="step",
            unit_scale=True,
            postfix=postfix,
            initial=self._initial,
            bar_format=self.BAR_FORMAT,
        )

    def on_exception(self, trainer: L.Trainer, pl_module: OnlineSGD, exception: BaseException) -> None:
        """Close the bar, so that the error is printed on a line of its own."""
        if self._train_progress_bar is not None:
            self._train_progress_bar.close()

    def get_metrics(self, trainer: L.Trainer, pl_module: OnlineSGD) -> dict[str, Any]:
        metrics = {"t": f"{pl_module.t:.4g}/{pl_module.t_max:g}"}
        if pl_module.history.risk:
            metrics["risk"] = f"{pl_module.history.risk[-1].mean():.4g}"
        return metrics
