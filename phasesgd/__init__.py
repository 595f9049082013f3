"""phasesgd: online SGD of two-layer networks and its order-parameter ODEs.

The public API. Configs (``conf/``) name their classes through it (``phasesgd.CommitteeStudent``),
so a module can move without breaking a config. Names load on first use: ``import phasesgd``
alone does not import Lightning.

The layers, from the bottom (``tests/test_architecture.py`` enforces the direction):

- ``infra``: validation, atomic files, threads, console, process lifetime, paths;
- ``theory``: scaling (regions, p, γ, ϑ, τ), the physics of a run, activations, overlaps, integrals;
- ``ode`` and ``sgd``: the order-parameter ODEs; SGD itself (networks, data, schedules, loop);
- ``viz``: every figure;
- ``training``: the Lightning module and its callbacks;
- ``app``: a run from a composed config (build, train, resume, identity);
- ``experiments``: sweeps, the paper's figures and the measured phase diagram.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    # theory
    "Region": "theory.scaling",
    "Scaling": "theory.scaling",
    "classify": "theory.scaling",
    "natural_time_exponent": "theory.scaling",
    "student_width": "theory.scaling",
    "learning_rate": "theory.scaling",
    "RunPhysics": "theory.physics",
    "Activation": "theory.activations",
    "get_activation": "theory.activations",
    "Overlaps": "theory.order_parameters",
    "order_parameters": "theory.order_parameters",
    "risk_from_overlaps": "theory.order_parameters",
    # ode
    "solve_ode": "ode",
    "ODESolution": "ode",
    "SolverOptions": "ode",
    "OrderParameterDrift": "ode",
    # sgd
    "Teacher": "sgd.networks",
    "CommitteeStudent": "sgd.networks",
    "TrainedReadoutStudent": "sgd.networks",
    "GaussianStream": "sgd.data",
    "LearningRate": "theory.schedules",
    "PowerLaw": "theory.schedules",
    "StepWise": "theory.schedules",
    # training
    "OnlineSGD": "training.module",
    "Measurement": "training.module",
    "DivergenceError": "training.module",
    "ProgressBar": "training.callbacks",
    "ODEPrediction": "training.callbacks",
    "OrderParameterLogger": "training.callbacks",
    "ResultsWriter": "training.callbacks",
    "SGDCheckpoint": "training.callbacks",
    # app
    "train": "app.train",
    "build_module": "app.build",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'phasesgd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
