"""Train students by online SGD: `python scripts/train.py [key=value ...]` (Hydra).

Exit status: 0 finished (or skipped as finished), 1 diverged or interrupted by Ctrl-C,
2 a config value refused (one line on stderr naming the key and its allowed range),
143 stopped by SIGTERM. An interrupted run leaves results and a checkpoint to resume from.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from phasesgd.app.errors import run_app
from phasesgd.app.train import train
from phasesgd.infra.lifetime import end_with_parent
from phasesgd.infra.validation import ConfigError
from phasesgd.training.module import DivergenceError

log = logging.getLogger("phasesgd")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and "joblib" in str(hydra_cfg.launcher.get("_target_", "")):
        end_with_parent()  # a killed sweep must not leave its workers running
    try:
        module = train(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as err:
        log.error("%s. Results up to then are in %s/results.npz", err, cfg.output_dir)
        if multirun:
            return float("nan")  # one diverging grid point must not end the sweep
        sys.exit(1)
    except SIGTERMException:
        log.error("stopped by SIGTERM; results up to then are in %s/results.npz", cfg.output_dir)
        sys.exit(143)
    if module is None:
        return None
    risk = module.history.risk[-1]
    log.info(
        "t=%.4g  risk=%.4g (mean of %d replicas)  results: %s/results.npz",
        module.t,
        risk.mean(),
        risk.size,
        cfg.output_dir,
    )
    return float(risk.mean())


if __name__ == "__main__":
    run_app(main)
