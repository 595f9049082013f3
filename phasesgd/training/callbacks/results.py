"""``results.npz``, ``config.yaml``, ``summary.json`` and ``risk.png`` of a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import yaml

from ...infra.io import save_npz, write_text
from ...infra.validation import require_bool
from ...viz.plotting import plot_risk, run_title
from ..module import OnlineSGD
from ..summary import summary_row

log = logging.getLogger(__name__)


class ResultsWriter(L.Callback):
    """Writes ``results.npz``, ``config.yaml``, ``summary.json`` (one tidy row, see
    :mod:`phasesgd.app.summary`) and ``risk.png`` into ``output_dir`` when
    the run ends — also when it stops on an error or is interrupted, so a diverged or
    stopped run keeps its history. Writing on an interruption never raises (a full disk
    must not skip the checkpoint, which Lightning calls after this callback), and a
    failure before this fit ran any SGD step writes nothing: the files of a run that
    failed to resume stay as they were.

    ``results.npz``: t (T,), steps (T,), lr (T,), risk (R, T), Q0 (R, p, p), M0 (R, p, k),
    P (k, k), Q, M (final), a0, a (second layers), Q_t (T, R, p, p) and M_t (T, R, p, k)
    when trajectories are kept, ``config`` (the resolved YAML), ``status`` ('finished' or
    the error), plus the ODE prediction's arrays (``module.prediction``). ``config_key`` is
    its key in the config (``callbacks.results``), named by a refused value.
    """

    # in the end-of-run sequence (phasesgd.training.callbacks): after the prediction, before the checkpoint
    stage = 3

    def __init__(self, output_dir: str = ".", plot: bool = True, *, config_key: str = "callbacks.results") -> None:
        require_bool(f"{config_key}.plot", plot)
        self.output_dir = Path(output_dir)
        self.plot = plot

    def on_train_end(self, trainer: L.Trainer, pl_module: OnlineSGD) -> None:
        self.write(pl_module, "finished")

    def on_exception(self, trainer: L.Trainer, pl_module: OnlineSGD, exception: BaseException) -> None:
        pl_module.rewind_unfinished_chunk()
        if not pl_module.advanced_this_fit:
            return
        try:
            self.write(pl_module, f"{type(exception).__name__}: {exception}".strip().rstrip(":"))
        except Exception as err:  # keep the interruption's own error the one that is raised
            log.error("could not write the results into %s: %s: %s", self.output_dir, type(err).__name__, err)

    def write(self, module: OnlineSGD, status: str) -> Path:
        results = collect_results(module)
        results["status"] = np.array(status)
        config_text = yaml.safe_dump(module.run_config, sort_keys=False)
        results["config"] = np.array(config_text)
        path = self.output_dir / "results.npz"
        save_npz(path, **results)
        write_text(self.output_dir / "config.yaml", config_text)
        row = summary_row(
            module.run_config,
            results["risk"],
            status,
            module.scaling.region.value,
            module.student.width,
            module.teacher.width,
        )
        write_text(self.output_dir / "summary.json", json.dumps(row, indent=1) + "\n")
        if self.plot and results["t"].size > 1:
            plot_risk(
                self.output_dir / "risk.png",
                results["t"],
                results["risk"],
                results.get("risk_ode"),
                title=run_title(module.physics(), module.student.width, module.teacher.width),
                band=_band(results),
            )
        return path


def collect_results(module: OnlineSGD) -> dict[str, np.ndarray]:
    """The arrays of ``results.npz`` from a module's history."""
    h = module.history
    results = h.arrays(module.steps_per_unit) | {"P": module.overlaps().P.double().cpu().numpy()}
    if module.prediction is not None:
        results |= module.prediction.arrays(len(h))
    return results


def _band(results: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The predicted spread over replicas (their initial spread included), as risk.png draws it."""
    if "risk_ode_sd_total" not in results:
        return None
    return results["risk_ode_sd_total"], results["ode_band_valid"]
