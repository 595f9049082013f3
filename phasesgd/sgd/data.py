"""Streaming Gaussian inputs: fresh x ~ N(0, I_d) at every SGD step, never stored.

Each replica owns a generator on the run's device, seeded from (seed, 'data', replica),
so a replica's stream does not depend on how many replicas run beside it. Inputs are
drawn a chunk of steps at a time; on the CPU the next chunk is drawn in a background
thread while the current one trains (drawing Gaussians is as costly as the SGD step).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from ..infra.validation import ConfigError, require_at_least
from .seeding import generator


@dataclass
class Chunk:
    """Inputs x (S, R, B, d) and label noise ξ (S, R, B) for S consecutive SGD steps.

    Step-major, so that ``inputs[s]`` is a contiguous (R, B, d) block: batched matmuls
    on a view strided across steps are many times slower on the CPU.
    """

    inputs: Tensor
    label_noise: Tensor

    @property
    def steps(self) -> int:
        return self.inputs.shape[0]


class GaussianStream:
    """Per-replica streams of standard Gaussian inputs and label noise.

    Call :meth:`bind` once the device is known, then :meth:`draw` chunk after chunk.
    ``chunk_steps`` bounds the steps drawn at once (memory R·chunk_steps·B·d numbers);
    ``prefetch`` ('auto', True, False) draws the next chunk in a background thread;
    'auto' does so on the CPU only (CUDA kernels are asynchronous already).
    """

    def __init__(self, batch_size: int = 1, chunk_steps: int = 512, prefetch: bool | str = "auto") -> None:
        require_at_least("data.batch_size", batch_size, 1)
        require_at_least("data.chunk_steps", chunk_steps, 1)
        if prefetch != "auto" and not isinstance(prefetch, bool):
            raise ConfigError(f"data.prefetch must be one of ['auto', true, false], got {prefetch!r}")
        self.batch_size, self.chunk_steps = int(batch_size), int(chunk_steps)
        self.prefetch = prefetch
        self._generators: list[torch.Generator] = []
        self._pending: tuple[int, list[Tensor], Future[Chunk]] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._spare: list[Chunk] = []  # chunks handed back by release(), reused on the CPU

    def bind(self, dim: int, seed: int, replicas: range, device: torch.device, dtype: torch.dtype) -> None:
        self.dim, self.device, self.dtype = dim, torch.device(device), dtype
        self._generators = [generator(seed, "data", r, device=self.device) for r in replicas]
        self._pending = None
        use_thread = self.prefetch is True or (self.prefetch == "auto" and self.device.type == "cpu")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="phasesgd-data") if use_thread else None

    def _generate(self, steps: int) -> Chunk:
        """Each replica draws one contiguous block of inputs, then one of label noise (the
        stream's definition), which are laid out step-major."""
        like = dict(device=self.device, dtype=self.dtype)
        replicas, batch = len(self._generators), self.batch_size
        if self.device.type != "cpu":  # the caching allocator makes fresh tensors cheap
            x, xi = torch.empty(replicas, steps, batch, self.dim, **like), torch.empty(replicas, steps, batch, **like)
            for r, gen in enumerate(self._generators):
                x[r].normal_(generator=gen)
                xi[r].normal_(generator=gen)
            return Chunk(x.transpose(0, 1).contiguous(), xi.transpose(0, 1).contiguous())
        # On the CPU a fresh chunk of many replicas costs page faults on every draw, as much
        # as the drawing itself at R = 64: each replica draws into one small block, which
        # stays in cache, copied into a chunk handed back by release() where there is one.
        chunk = self._reusable(steps) or Chunk(
            torch.empty(steps, replicas, batch, self.dim, **like), torch.empty(steps, replicas, batch, **like)
        )
        x_block, xi_block = torch.empty(steps, batch, self.dim, **like), torch.empty(steps, batch, **like)
        for r, gen in enumerate(self._generators):
            chunk.inputs[:, r].copy_(x_block.normal_(generator=gen))
            chunk.label_noise[:, r].copy_(xi_block.normal_(generator=gen))
        return chunk

    def _reusable(self, steps: int) -> Chunk | None:
        while self._spare:
            chunk = self._spare.pop()
            if chunk.steps == steps:
                return chunk
        return None

    def release(self, chunk: Chunk) -> None:
        """Hand a chunk back once it is used: later draws may write into its memory, so the
        caller must not read it again. Optional; on the CPU it saves fresh memory per draw."""
        if self.device.type == "cpu" and len(self._spare) < 2:
            self._spare.append(chunk)

    def draw(self, steps: int, next_steps: int = 0) -> Chunk:
        """The next ``steps`` steps of every replica; starts drawing ``next_steps`` more."""
        if self._pending is not None and self._pending[0] == steps:
            chunk = self._pending[2].result()
        else:
            if self._pending is not None:  # a different size was asked for: rewind
                self._pending[2].result()
                self._set_states(self._pending[1])
            chunk = self._generate(steps)
        self._pending = None
        if next_steps and self._pool is not None:
            self._pending = (next_steps, self._states(), self._pool.submit(self._generate, next_steps))
        return chunk

    def _states(self) -> list[Tensor]:
        return [g.get_state() for g in self._generators]

    def _set_states(self, states: list[Tensor]) -> None:
        for g, s in zip(self._generators, states):
            g.set_state(s)

    def state_dict(self) -> dict:
        """Generator states at the first step not yet handed out (prefetched draws excluded)."""
        return {"generators": self._pending[1] if self._pending is not None else self._states()}

    def load_state_dict(self, state: dict) -> None:
        if self._pending is not None:
            self._pending[2].result()
            self._pending = None
        self._set_states([s.cpu() for s in state["generators"]])

    def rewind(self, state: dict) -> None:
        """Back to ``state`` (a :meth:`state_dict` taken earlier) after an interruption: waits
        for any background draw (the pool is shut down, so none can be running or be lost
        between two statements) and forgets it. Used once a run is ending."""
        self.close()
        self._pending = None
        self._set_states([s.cpu() for s in state["generators"]])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class StepChunks(IterableDataset):
    """The Lightning 'dataset': (start, stop) SGD-step ranges, one per training_step.

    The Gaussian data themselves are drawn on the device by :class:`GaussianStream`;
    these tiny tickets only pace Lightning's loop. It deliberately has no ``__len__``:
    a resumed run starts from its own step counter, and Lightning's restored batch
    counters must not decide when the run ends.
    """

    def __init__(self, boundaries: list[int]) -> None:
        self.boundaries = boundaries

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.boundaries[:-1], self.boundaries[1:]))
