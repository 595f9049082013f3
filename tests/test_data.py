"""The Gaussian stream: its definition per replica, and chunks handed back for reuse."""

from __future__ import annotations

import torch

from phasesgd.sgd.data import GaussianStream
from phasesgd.sgd.seeding import generator


def _stream(replicas: range, prefetch: bool, chunk_steps: int = 8) -> GaussianStream:
    stream = GaussianStream(batch_size=2, chunk_steps=chunk_steps, prefetch=prefetch)
    stream.bind(5, 3, replicas, torch.device("cpu"), torch.float64)
    return stream


def test_each_replica_draws_its_inputs_then_its_label_noise():
    """Replica r's part of a chunk is its own generator drawing the (S, B, d) inputs, then
    the (S, B) label noise, whatever replicas run beside it."""
    stream = _stream(range(1, 4), prefetch=False)
    chunks = [stream.draw(6), stream.draw(4)]
    for i, r in enumerate(range(1, 4)):
        gen = generator(3, "data", r, device=torch.device("cpu"))
        for chunk in chunks:
            x = torch.empty(chunk.steps, 2, 5, dtype=torch.float64).normal_(generator=gen)
            xi = torch.empty(chunk.steps, 2, dtype=torch.float64).normal_(generator=gen)
            assert torch.equal(chunk.inputs[:, i], x) and torch.equal(chunk.label_noise[:, i], xi)
            assert chunk.inputs.is_contiguous() and chunk.label_noise.is_contiguous()


def test_released_chunks_are_reused_and_change_nothing():
    """A consumer that hands each chunk back (with the next one drawn in the background)
    sees the same numbers as one that keeps them; the memory is really reused."""
    sizes = [8, 8, 8, 3, 8, 8]
    kept, reused = _stream(range(2), prefetch=False), _stream(range(2), prefetch=True)
    pointers, held = [], []  # held: without the pool, no memory could come back
    for i, n in enumerate(sizes):
        following = sizes[i + 1] if i + 1 < len(sizes) else 0
        expected, chunk = kept.draw(n), reused.draw(n, next_steps=following)
        assert torch.equal(chunk.inputs, expected.inputs) and torch.equal(chunk.label_noise, expected.label_noise)
        pointers.append(chunk.inputs.data_ptr())
        reused.release(chunk)
        held.append(chunk)
    reused.close()
    assert len(set(pointers)) < len(sizes)
