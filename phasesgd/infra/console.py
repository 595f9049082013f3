"""What a run prints: the progress bar and phasesgd's own log lines.

Lightning announces the accelerators (GPU/TPU availability), advertises litlogger, says
"`max_epochs=1` reached" and "`weights_only` was not set" at INFO level, and warns about a
``srun`` on the PATH and a deprecated ``LeafSpec`` of torch's pytree: none of it concerns
a phasesgd run. :func:`quiet_console` turns it off; ``hydra.verbose=true`` (or a config
key ``verbose: true``) keeps it.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from hydra.core.hydra_config import HydraConfig

# Lightning's info loggers (accelerators, tips, "max_epochs reached", checkpoint notes).
CHATTY_LOGGERS = ("lightning.pytorch", "lightning.fabric")

# Warnings printed on every run that a user can do nothing about (message regexes).
CHATTY_WARNINGS = (
    r".*`srun` command is available on your system but is not used.*",
    r".*LeafSpec.*is deprecated.*",
    r".*`weights_only` was not set.*",
    r".*does not have many workers.*",
    r".*configure_optimizers.*returned `None`.*",
    r".*IterableDataset.*__len__.*",
)


def is_verbose(cfg: Any = None) -> bool:
    """True if the config says ``verbose: true`` or Hydra runs with ``hydra.verbose`` set."""
    if cfg is not None and cfg.get("verbose"):
        return True
    return HydraConfig.initialized() and bool(HydraConfig.get().verbose)


def quiet_console(verbose: bool = False) -> None:
    """Silence Lightning's INFO messages and the warnings of :data:`CHATTY_WARNINGS`
    (``verbose=False``), or let them through again (``verbose=True``)."""
    level = logging.INFO if verbose else logging.WARNING
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for pattern in CHATTY_WARNINGS:
        warnings.filterwarnings("default" if verbose else "ignore", message=pattern)
