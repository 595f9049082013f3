"""Train students by online SGD: `python scripts/train.py [key=value ...]` (Hydra)."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from phasesgd.module import DivergenceError
from phasesgd.run import train

log = logging.getLogger("phasesgd")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        module = train(cfg)
    except DivergenceError as err:
        log.error("%s. Results up to then are in %s/results.npz", err, cfg.output_dir)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return float("nan")  # one diverging grid point must not end the sweep
        sys.exit(1)
    if module is None:
        return None
    risk = module.history.risk[-1]
    log.info("t=%.4g  risk=%.4g (mean of %d replicas)  results: %s/results.npz", module.t, risk.mean(), risk.size, cfg.output_dir)
    return float(risk.mean())


if __name__ == "__main__":
    main()
