"""Atomic writes: every file is written beside its destination, then renamed over it,
so a crash leaves either the old file or the new one, never a torn one.

The temporary file is created with mode 0666 so that the kernel applies the umask, as
for any ordinary file (``tempfile.mkstemp`` would give 0600, and that mode would
survive the rename). Temporaries carry :data:`TEMPORARY_MARK` in their name, so that
the ones a killed process leaves behind are recognised and removed when a run starts
again in the same folder (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TEMPORARY_MARK = ".phasesgd-tmp"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it to ``path`` on success.

    The temporary keeps the destination's suffix (matplotlib and numpy choose the format
    from it) and is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{TEMPORARY_MARK}{path.suffix}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode 0666 & ~umask
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that replaced the file (fsspec, under Lightning) chose its own
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` that a killed run left in ``folder``;
    returns them. Only names carrying :data:`TEMPORARY_MARK` are touched: a run's results
    are never removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TEMPORARY_MARK}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` made atomic."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
