"""One tidy row per run (``summary.json``).

Sweeps read these rows instead of re-running anything, and a sweep that is started again
skips every grid point whose results are already on disk with the same physics
(:mod:`phasesgd.theory.identity`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..infra.paths import PROJECT_ROOT
from ..infra.statistics import mean_and_error
from ..theory.identity import identity, physics_record


def git_revision() -> str:
    """The package's git commit, with '+dirty' for uncommitted changes, or 'unknown'."""
    root = PROJECT_ROOT
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def is_finished(output_dir: str | Path, requested: dict[str, Any]) -> bool:
    """True when ``output_dir`` holds a finished run (``summary.json``) of the physics of
    ``requested`` (its ``config.yaml`` compared by :func:`~phasesgd.theory.identity.physics_record`,
    so that a run of an earlier release counts)."""
    folder = Path(output_dir)
    try:
        row = json.loads((folder / "summary.json").read_text())
        stored = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, json.JSONDecodeError, yaml.YAMLError):
        return False
    if not isinstance(row, dict) or not isinstance(stored, dict) or row.get("status") != "finished":
        return False
    return physics_record(stored) == physics_record(requested)


def summary_row(config: dict[str, Any], risk: np.ndarray, status: str, region: str, p: int, k: int) -> dict[str, Any]:
    """The row: hash, revision, seed, κ, δ, d, p, k, Δ, γ0, final risk (mean, s.e.), regime, status."""
    final = risk[:, -1]
    mean, se = mean_and_error(final)
    return {
        "config_hash": identity(config),
        "git_revision": git_revision(),
        "seed": config.get("seed"),
        "kappa": config.get("kappa"),
        "delta": config.get("lr", {}).get("delta"),
        "d": config.get("d"),
        "p": p,
        "k": k,
        "noise": config.get("teacher", {}).get("noise"),
        "gamma0": config.get("lr", {}).get("gamma0"),
        "replicas": int(final.size),
        "t_max": config.get("t_max"),
        "risk_initial_mean": float(risk[:, 0].mean()),
        "risk_final_mean": float(mean),
        "risk_final_se": float(se),
        "regime": region,
        "status": status,
    }
