"""Lightning callbacks: TensorBoard logging of the order parameters, the ODE prediction,
results files, atomic checkpoints and the progress bar. All of them read the module's
own SGD-step counter and history: under manual optimisation Lightning's ``global_step``
does not count SGD steps.
"""

from .checkpoint import SGDCheckpoint
from .ode_prediction import ODEPrediction
from .progress import ProgressBar
from .results import ResultsWriter, collect_results
from .tensorboard import OrderParameterLogger, TimeAxes, physics_hparams, tensorboard, write_measurement

__all__ = [
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
