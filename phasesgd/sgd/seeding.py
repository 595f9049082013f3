"""Independent, reproducible seeds for every random stream of a run.

Each stream (teacher weights, one replica's initial weights, one replica's data)
gets its own seed derived from the run seed and the stream's name, so replica r
of a batched run draws exactly what it draws when run alone.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 63-bit seed for the stream named by ``keys`` (numpy ``SeedSequence``)."""
    entropy = [int(seed)] + [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, *keys: str | int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with :func:`derive_seed`."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))
