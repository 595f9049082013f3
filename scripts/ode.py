"""Solve the order-parameter ODEs alone: `python scripts/ode.py [init=run/results.npz] [key=value ...]`.

Same config groups as train.py (conf/ode.yaml adds `init` and `ode.*`). Writes `ode.npz`
(t, risk, Q, M, a, P, config) and `risk.png` into the Hydra run directory. A refused
config value or `init` file: one line on stderr, exit status 2.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from phasesgd.app.errors import run_app
from phasesgd.app.ode_only import solve_from_config
from phasesgd.infra.validation import ConfigError

log = logging.getLogger("phasesgd")


@hydra.main(config_path="../conf", config_name="ode", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        sol = solve_from_config(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info(
        "%s ODE (%s, %d evaluations): risk %.4g at t=0 → %.4g at t=%g; %s/ode.npz",
        sol.mode,
        sol.method,
        sol.evaluations,
        sol.risk[..., 0].mean(),
        sol.risk[..., -1].mean(),
        sol.t[-1],
        cfg.output_dir,
    )
    return float(sol.risk[..., -1].mean())


if __name__ == "__main__":
    run_app(main)
