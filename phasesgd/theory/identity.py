"""A run's identity is its physics: a canonical record of what a resolved config computes.

The record is the flat ``{'lr.gamma0': 8.0, 'student._target_': 'CommitteeStudent', ...}`` of
the config without the keys that only say where and how a run is shown or computed
(:data:`PRESENTATION_KEYS`), with each class named by its name alone, never its module path,
and without a key that still holds the :data:`NEUTRAL_DEFAULTS` value that reproduces the
behaviour from before the key existed. So moving a module, or adding a key with such a
default, leaves every stored run recognised: finished, resumable and re-solvable.

Stored runs are compared by their records (``config.yaml`` or a checkpoint's config against
the requested one), never by a hash written by another release.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from typing import Any

# Keys that change where and how a run is shown or computed, not what it computes.
PRESENTATION_KEYS = (
    "output_dir",
    "resume",
    "skip_finished",
    "trainer",
    "logger",
    "callbacks",
    "hydra",
    "cpu_threads",
    "verbose",
)
# Keys that say how long a run goes on: a resumed run may extend them.
LENGTH_KEYS = ("t_max", "module.t_max")
# Keys added after a release, at the value that reproduces that release's runs: a stored run
# without the key and a requested one holding this value are the same physics.
NEUTRAL_DEFAULTS: dict[str, Any] = {"engine.name": "sgd", "module.engine": "sgd"}


def _canonical(key: str, value: Any) -> Any:
    """A class path by its class name; lists as lists."""
    if key.endswith("_target_") and isinstance(value, str):
        return value.rpartition(".")[2]
    if isinstance(value, tuple):
        return list(value)
    return value


def _as_float(value: Any) -> Any:
    """Numbers as floats, so that 8 and 8.0 (one learning rate, equal in the record) hash alike."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        return [_as_float(v) for v in value]
    return value


def physics_record(config: dict[str, Any], with_length: bool = True) -> dict[str, Any]:
    """The canonical flat record of a resolved config (see the module docstring); without
    :data:`LENGTH_KEYS` when ``with_length`` is false (what a resume must keep)."""
    record: dict[str, Any] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{name}.")
            elif with_length or name not in LENGTH_KEYS:
                record[name] = _canonical(name, value)

    walk({k: v for k, v in config.items() if k not in PRESENTATION_KEYS}, "")
    for key, default in NEUTRAL_DEFAULTS.items():
        if key in record and record[key] == _canonical(key, default):
            del record[key]
    return record


def identity(config: dict[str, Any]) -> str:
    """SHA-1 (12 hex digits) of :func:`physics_record`: the ``config_hash`` of ``summary.json``."""
    record = {key: _as_float(value) for key, value in physics_record(config).items()}
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def physics_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``['lr.gamma0: 8.0 → 4.0', ...]``: the physics keys whose values differ, run length aside."""
    a, b = physics_record(stored, with_length=False), physics_record(requested, with_length=False)
    missing = object()
    return [
        f"{key}: {a.get(key, '(absent)')!r} → {b.get(key, '(absent)')!r}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, missing) != b.get(key, missing)
    ]
