"""The progress bar of a run."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from ..module import OnlineSGD


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar over the run's chunks of SGD steps, showing t and the
    replica-mean risk (the data loader has no length, so the total comes from the module)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        done, total = pl_module.chunk_progress()
        self.train_progress_bar.reset(total=total)
        self.train_progress_bar.update(done)
        self.train_progress_bar.set_description("SGD")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
