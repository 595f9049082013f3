"""Sweeps: expanding a Hydra multirun into jobs, running them, and reading them back.

:func:`sweep_jobs` expands an experiment's ``hydra.sweeper.params`` and any swept
overrides as a Cartesian product, through Hydra's public API (the compose API and the
override parser); :func:`run_sweep` runs the jobs in this process, each into
``<sweep_dir>/<override_dirname>`` — the folder that ``scripts/train.py -m ...
hydra.sweep.dir=<sweep_dir>`` gives the same job, so the two resume each other — skipping
finished runs. :func:`load_sweep` reads every run's ``summary.json`` row back without
re-running anything.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from ..app.train import train
from ..infra.paths import config_dir
from ..training.module import DivergenceError
from .tables import same_value

log = logging.getLogger(__name__)

# Overrides that only change how a run is shown, used when a sweep runs in this process.
QUIET = ("trainer.enable_progress_bar=false", "callbacks.progress=null")


def compose_config(overrides: Sequence[str] = (), hydra_config: bool = False):
    """``conf/config.yaml`` composed with ``overrides`` (Hydra's compose API)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


def sweep_jobs(overrides: Sequence[str] = ()) -> list[list[str]]:
    """The jobs of ``scripts/train.py -m <overrides>``: the composed config's
    ``hydra.sweeper.params`` (e.g. from ``experiment=<name>``) followed by ``overrides``
    (a key given in both takes the command line's value), expanded as a Cartesian product
    in the order Hydra's basic sweeper uses. Each job is its list of overrides."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose_config(fixed, hydra_config=True)
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
    task = [
        o
        for o in parser.parse_overrides([*params, *(o.input_line for o in parsed)])
        if not o.get_key_element().startswith("hydra")
    ]
    latest = {o.get_key_element(): o for o in task}  # the command line wins over the experiment's params
    # Each value written as Hydra's basic sweeper writes it (e.g. '~logger' → '~logger=null'), so
    # that the job's override_dirname, hence its folder, is the one `train.py -m` gives it.
    choices = [
        [f"{key}={value}" for value in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [f"{key}={o.get_value_element_as_str()}"]
        for key, o in latest.items()
    ]
    return [list(job) for job in itertools.product(*choices)]


def job_dir(sweep_dir: str | os.PathLike, job: Sequence[str]) -> Path:
    """``<sweep_dir>/<override_dirname>``: Hydra's default ``hydra.job.override_dirname``
    (the job's overrides sorted and joined by ','), as in conf/config.yaml's sweep subdir."""
    return Path(sweep_dir) / ",".join(sorted(job))


def run_sweep(jobs: Iterable[Sequence[str]], sweep_dir: str | os.PathLike, extra: Sequence[str] = QUIET) -> list[Path]:
    """Run every job in this process (one after the other) into :func:`job_dir`; a
    finished run there is skipped (``skip_finished``), a diverged one is logged and kept.
    ``extra`` are presentation overrides, which do not change a run's identity."""
    dirs = []
    for job in jobs:
        out = job_dir(sweep_dir, job)
        cfg = compose_config([*job, *extra, f"output_dir='{out}'"])
        start = time.perf_counter()
        try:
            module = train(cfg)
            note = "skipped (finished before)" if module is None else "done"
        except DivergenceError as err:
            note = f"diverged: {err}"
        log.info("%s: %s in %.1f s", out.name, note, time.perf_counter() - start)
        dirs.append(out)
    return dirs


def read_row(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``summary.json`` row plus ``path``, its folder (which holds ``results.npz``)."""
    return json.loads((Path(run_dir) / "summary.json").read_text()) | {"path": str(run_dir)}


def load_sweep(path: str | os.PathLike, **where: Any) -> list[dict[str, Any]]:
    """Every run under ``path`` as its :func:`read_row` (see :mod:`phasesgd.training.summary` for the
    columns), sorted by folder, without re-running anything. Keyword arguments keep the
    rows whose key equals the value (numbers compared as exact decimals), e.g.
    ``load_sweep(dir, noise=1e-3, status="finished")``."""
    rows = [read_row(summary.parent) for summary in sorted(Path(path).rglob("summary.json"))]
    return [row for row in rows if all(same_value(row.get(key), value) for key, value in where.items())]
