"""A checkpoint is checked before a run resumes from it, so that a failed resume never
touches the run it was meant to continue.

The checks, in order: the file exists, is not empty and loads; it is a phasesgd
checkpoint (it holds the module's SGD state and the run's config); its physics — the
resolved config without the presentation keys and without ``t_max``
(:func:`phasesgd.theory.identity.physics_record`) — equals the requested one; the requested
``t_max`` is not shorter than the checkpoint's; and its weights have the shapes of the
module about to be trained.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..infra.validation import ConfigError
from ..theory.identity import physics_differences


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path`` on the CPU, or :class:`ConfigError` saying why it is not
    a readable phasesgd checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint file at {path}")
    if path.stat().st_size == 0:
        raise ConfigError(f"resume: {path} is empty (0 bytes), not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ConfigError(
            f"resume: {path} cannot be read as a checkpoint (truncated, corrupt or not a torch file): "
            f"{_first_line(err)}"
        ) from None
    state = checkpoint.get("phasesgd") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(state, dict)
        or "state_dict" not in checkpoint
        or not {"sgd_steps", "history"} <= state.keys()
        or not {"data", "chain"} & state.keys()
    ):
        raise ConfigError(f"resume: {path} is not a phasesgd checkpoint (it lacks the module's SGD state)")
    if not isinstance(state.get("config"), dict):
        raise ConfigError(
            f"resume: {path} does not record its run's config (written by an older phasesgd); start a new run"
        )
    return checkpoint


def check_resume(
    path: str | os.PathLike, requested: dict[str, Any], weights: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Load and check the checkpoint at ``path`` against the ``requested`` resolved config
    and the state dict ``weights`` of the module built from it; returns the checkpoint."""
    checkpoint = load_checkpoint(path)
    state = checkpoint["phasesgd"]
    differences = physics_differences(state["config"], requested)
    if differences:
        raise ConfigError(
            f"resume: {path} is a run of other physics ({'; '.join(differences)}); "
            "resume with the checkpoint's values or start a new run"
        )
    stored_t_max, t_max = float(state.get("t_max", state["config"]["t_max"])), float(requested["t_max"])
    if t_max < stored_t_max:
        raise ConfigError(
            f"resume: t_max={t_max:g} is shorter than the checkpoint's t_max={stored_t_max:g}; "
            f"a resumed run can only be extended (t_max >= {stored_t_max:g})"
        )
    stored = checkpoint["state_dict"]
    wrong = [
        f"{key} {tuple(stored[key].shape) if key in stored else '(absent)'} vs {tuple(value.shape)}"
        for key, value in weights.items()
        if key not in stored or stored[key].shape != value.shape
    ]
    if wrong or stored.keys() - weights.keys():
        raise ConfigError(f"resume: the weights in {path} do not fit this run ({'; '.join(wrong) or 'other tensors'})")
    return checkpoint
