"""Lightning callbacks: TensorBoard logging of the order parameters, the ODE prediction,
results files, atomic checkpoints and the progress bar. All of them read the module's
own SGD-step counter and history: under manual optimisation Lightning's ``global_step``
does not count SGD steps.

When a run ends, the callbacks act in one sequence, by their ``stage``: the progress bar
closes (0), the prediction is solved (1), TensorBoard draws (2), the results are written
(3), the checkpoint is saved (4). :func:`end_of_run_order` sorts them so, whatever order a
config lists them in; a callback without a stage acts at stage 2.
"""

from collections.abc import Iterable

import lightning as L

from .checkpoint import SGDCheckpoint
from .ode_prediction import ODEPrediction
from .progress import ProgressBar
from .results import ResultsWriter, collect_results
from .tensorboard import OrderParameterLogger, TimeAxes, physics_hparams, tensorboard, write_measurement

DEFAULT_STAGE = 2


def end_of_run_order(callbacks: Iterable[L.Callback]) -> list[L.Callback]:
    """``callbacks`` sorted by ``stage`` (stable: equal stages keep the config's order)."""
    return sorted(callbacks, key=lambda c: getattr(c, "stage", DEFAULT_STAGE))


__all__ = [
    "end_of_run_order",
    "ODEPrediction",
    "OrderParameterLogger",
    "ProgressBar",
    "ResultsWriter",
    "SGDCheckpoint",
    "TimeAxes",
    "collect_results",
    "physics_hparams",
    "tensorboard",
    "write_measurement",
]
