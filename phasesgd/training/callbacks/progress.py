"""The progress bar of a run, counting SGD steps."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from ..module import OnlineSGD


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar over the run's SGD steps ν up to ν_max (not over its chunks,
    whose sizes vary with the log-spaced measurements), so that its rate and ETA are per
    SGD step; the postfix shows t / t_max and the replica-mean risk of the last measurement.
    A resumed run starts the bar where it stands, and its rate counts the new steps only."""

    # its place in the end-of-run sequence (phasesgd.training.callbacks): closes the bar before anything else logs
    stage = 0

    def init_train_tqdm(self) -> Tqdm:
        module: OnlineSGD = self.trainer.lightning_module
        return Tqdm(
            desc="SGD",
            total=int(module.measure_steps[-1]),
            initial=module.sgd_steps,
            unit="step",
            unit_scale=True,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """The bar of :meth:`init_train_tqdm` spans the whole run: nothing to reset per epoch."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: OnlineSGD, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if self._should_update(batch_idx + 1, -1) or trainer.should_stop:
            bar.n = pl_module.sgd_steps
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_exception(self, trainer: L.Trainer, pl_module: OnlineSGD, exception: BaseException) -> None:
        """Close the bar, so that the error is printed on a line of its own."""
        if self._train_progress_bar is not None:
            self._train_progress_bar.close()

    def get_metrics(self, trainer: L.Trainer, pl_module: OnlineSGD) -> dict[str, Any]:
        metrics = {"t": f"{pl_module.t:.4g}/{pl_module.t_max:g}"}
        if pl_module.history.risk:
            metrics["risk"] = f"{pl_module.history.risk[-1].mean():.4g}"
        return metrics
