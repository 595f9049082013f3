"""Initial order parameters (Q0, M0, P) from a file, checked against the run's config
before the ODE is solved (``scripts/ode.py init=FILE``)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from ..infra.validation import ConfigError

REQUIRED = ("Q0", "M0", "P")


def load_initial_conditions(path: str | os.PathLike, p: int, k: int) -> tuple[np.ndarray, ...]:
    """(Q0, M0, P, a0) from an .npz (a run's ``results.npz`` or one written by hand):
    Q0 (..., p, p), M0 (..., p, k) with the same leading (replica) axes, P (k, k) and
    optionally a0 (..., p), all finite; p and k are the config's student and teacher
    widths. Anything else is a :class:`ConfigError` naming ``init`` and what differs."""
    try:
        with np.load(path) as archive:
            arrays = {key: np.asarray(archive[key], dtype=np.float64) for key in (*REQUIRED, "a0") if key in archive}
            present = sorted(archive.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise ConfigError(f"init: {path} cannot be read as an .npz file ({reason})") from None
    missing = [key for key in REQUIRED if key not in arrays]
    if missing:
        raise ConfigError(
            f"init: {path} lacks {', '.join(missing)} (it has {present}); it needs Q0 (p, p), M0 (p, k) and P (k, k)"
        )
    Q0, M0, P, a0 = arrays["Q0"], arrays["M0"], arrays["P"], arrays.get("a0")
    if Q0.ndim < 2 or Q0.shape[-2:] != (p, p):
        raise ConfigError(
            f"init: Q0 has shape {Q0.shape}, but the config's student width is p={p} (student.width, kappa, d): "
            f"expected (..., {p}, {p})"
        )
    if M0.shape != Q0.shape[:-2] + (p, k):
        raise ConfigError(
            f"init: M0 has shape {M0.shape}, expected {Q0.shape[:-2] + (p, k)} for p={p} and teacher.width k={k}"
        )
    if P.shape != (k, k):
        raise ConfigError(f"init: P has shape {P.shape}, expected ({k}, {k}) for teacher.width k={k}")
    if a0 is not None and a0.shape != Q0.shape[:-2] + (p,):
        raise ConfigError(f"init: a0 has shape {a0.shape}, expected {Q0.shape[:-2] + (p,)}")
    for name, value in (("Q0", Q0), ("M0", M0), ("P", P), ("a0", a0)):
        if value is not None and not np.isfinite(value).all():
            raise ConfigError(f"init: {name} in {path} holds non-finite values")
    return Q0, M0, P, a0
