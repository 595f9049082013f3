"""How many CPU threads torch uses, chosen from the size of the work unless the user set it.

Both the SGD step of a narrow student and the ODE drift at small p are many small tensor
operations: there, OpenMP threads cost more in synchronisation than they save, and on a
busy machine an oversubscribed thread pool is several times slower than one thread. Only
operations on large tensors (a wide student's I4 sum, many replicas) gain from threads.
"""

from __future__ import annotations

import logging
import os

import torch

from .validation import require_at_least

log = logging.getLogger(__name__)

# Numbers touched by one typical tensor operation above which a second thread pays off;
# measured by scripts/benchmark_ode.py (the I4 block of the drift) on a 2-core machine.
PARALLEL_ABOVE = 2**20


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def choose_threads(numbers_per_op: float, requested: int | None = None) -> int:
    """``requested`` if given (validated), else 1 for small operations and every available
    core once one operation touches more than :data:`PARALLEL_ABOVE` numbers."""
    if requested is not None:
        require_at_least("cpu_threads", requested, 1)
        return int(requested)
    return available_cores() if numbers_per_op > PARALLEL_ABOVE else 1


def use_threads(numbers_per_op: float, requested: int | None = None) -> int:
    """Set torch's intra-op thread count by :func:`choose_threads`; returns it. A user's
    ``OMP_NUM_THREADS`` counts as a request."""
    if requested is None and os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        requested = int(os.environ["OMP_NUM_THREADS"])
    n = choose_threads(numbers_per_op, requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("torch threads: %d (largest operation ~%.3g numbers)", n, numbers_per_op)
    return n
