"""One tidy row per run (``summary.json``) and the identity of a run's physics.

Sweeps read these rows instead of re-running anything, and a sweep that is started
again skips every grid point whose results are already on disk with the same hash.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ..infra.paths import PROJECT_ROOT

# Keys that change where and how a run is shown or computed, not what it computes.
PRESENTATION_KEYS = ("output_dir", "resume", "skip_finished", "trainer", "logger", "callbacks", "hydra", "cpu_threads", "verbose")
# Keys that say how long a run goes on: a resumed run may extend them.
LENGTH_KEYS = ("t_max", "module.t_max")


def config_hash(config: dict[str, Any]) -> str:
    """SHA-1 (12 hex digits) of the resolved config without :data:`PRESENTATION_KEYS`."""
    physics = {k: v for k, v in config.items() if k not in PRESENTATION_KEYS}
    return hashlib.sha1(json.dumps(physics, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flat_physics(config: dict[str, Any]) -> dict[str, Any]:
    """The physics of a run as flat ``{'lr.gamma0': 8.0, ...}``: the resolved config
    without :data:`PRESENTATION_KEYS` and :data:`LENGTH_KEYS` (what a resume must keep)."""
    flat: dict[str, Any] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{name}.")
            elif name not in LENGTH_KEYS:
                flat[name] = value

    walk({k: v for k, v in config.items() if k not in PRESENTATION_KEYS}, "")
    return flat


def physics_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``['lr.gamma0: 8.0 → 4.0', ...]``: the physics keys whose values differ (see :func:`flat_physics`)."""
    a, b = flat_physics(stored), flat_physics(requested)
    missing = object()
    return [
        f"{key}: {a.get(key, '(absent)')!r} → {b.get(key, '(absent)')!r}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, missing) != b.get(key, missing)
    ]


def git_revision() -> str:
    """The package's git commit, with '+dirty' for uncommitted changes, or 'unknown'."""
    root = PROJECT_ROOT
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def is_finished(output_dir: str | Path, expected_hash: str) -> bool:
    """True when ``output_dir/summary.json`` records a finished run of the same physics."""
    path = Path(output_dir) / "summary.json"
    if not path.exists():
        return False
    try:
        row = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return row.get("status") == "finished" and row.get("config_hash") == expected_hash


def summary_row(config: dict[str, Any], risk: np.ndarray, status: str, region: str, p: int, k: int) -> dict[str, Any]:
    """The row: hash, revision, seed, κ, δ, d, p, k, Δ, γ0, final risk (mean, s.e.), regime, status."""
    final = risk[:, -1]
    se = float(final.std(ddof=1) / np.sqrt(final.size)) if final.size > 1 else 0.0
    return {
        "config_hash": config_hash(config),
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
        "risk_final_mean": float(final.mean()),
        "risk_final_se": se,
        "regime": region,
        "status": status,
    }
