"""Worker processes that end with their parent.

A joblib (loky) worker of a Hydra multirun keeps running under PID 1 when the multirun
process is killed. :func:`end_with_parent` watches the parent from a daemon thread and,
once this process has been re-parented, sends it SIGTERM — Lightning then stops at the
end of the current chunk and the run writes its results and checkpoint — and exits
hard after a grace period if the run has not ended by then.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

_watcher: threading.Thread | None = None


def _watch(parent: int, poll_seconds: float, grace_seconds: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    log.warning("the parent process %d has ended: stopping this run (results and checkpoint are written)", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_seconds)
    os._exit(128 + signal.SIGTERM)


def end_with_parent(poll_seconds: float = 1.0, grace_seconds: float = 60.0) -> None:
    """Start (once per process) the thread that ends this process when its parent dies."""
    global _watcher
    if _watcher is None or not _watcher.is_alive():
        _watcher = threading.Thread(
            target=_watch, args=(os.getppid(), poll_seconds, grace_seconds), daemon=True, name="phasesgd-parent-watch"
        )
        _watcher.start()
