"""Index tuples of fields: gather their sub-covariances and evaluate in bounded chunks.

The quadrature routes (and the relu I4 path integral) work on one sub-covariance per
index tuple; these helpers build the tuples and keep the memory of one chunk bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor

# Floats held at once by one chunk of index tuples: 1 GiB of float64.
CHUNK_ELEMENTS = 2**27

T = TypeVar("T")


def pairs(ia: Tensor, ib: Tensor, same: bool) -> Tensor:
    """(T, 2) index pairs: the upper triangle (a ≤ b) when both come from one group."""
    if same:
        iu = torch.triu_indices(ia.numel(), ia.numel(), device=ia.device)
        return torch.stack([ia[iu[0]], ia[iu[1]]], dim=-1)
    return torch.cartesian_prod(ia, ib).reshape(-1, 2)


def group_pairs(groups: Sequence[T]) -> Iterator[tuple[T, T, bool]]:
    """Each unordered pair of groups once, with a flag for a group paired with itself."""
    for x in range(len(groups)):
        for y in range(x, len(groups)):
            yield groups[x], groups[y], x == y


def map_chunks(
    flat: Tensor,
    idx: Tensor,
    fn: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
    elements: int,
    budget: int = CHUNK_ELEMENTS,
) -> Tensor | tuple[Tensor, ...]:
    """fn on the (B, t, m, m) sub-covariances of the ``idx`` rows (t, m), in chunks of tuples.

    ``elements`` estimates the floats held at once per index tuple (nodes × live
    temporaries); a chunk holds at most ``budget`` of them.
    """
    step = max(1, budget // max(1, flat.shape[0] * elements))
    outs = []
    for s in range(0, idx.shape[0], step):
        rows = idx[s : s + step]
        outs.append(fn(flat[:, rows[:, :, None], rows[:, None, :]]))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outs))
    return torch.cat(outs, dim=1)
