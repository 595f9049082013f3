"""How a bad config reaches the user: one line naming the key, exit status 2, no traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hydra.errors import ConfigCompositionException, InstantiationException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from ..infra.validation import ConfigError


@contextmanager
def config_errors() -> Iterator[None]:
    """Turn the ways a bad config surfaces into one :class:`ConfigError` line: a missing
    value (``???``) or a broken interpolation, and a constructor's check raised inside
    Hydra's ``instantiate`` (which wraps it in an ``InstantiationException``)."""
    try:
        yield
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(str(cause).splitlines()[0]) from None
        raise


def run_app(app: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` app so that a config Hydra cannot compose (an unknown key or
    option, a malformed override) is reported like every other bad value: one line on
    stderr, exit status 2. ``HYDRA_FULL_ERROR=1`` set by the user keeps Hydra's traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return app()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing several lines and exiting
    try:
        return app()
    except (ConfigCompositionException, OverrideParseException, OmegaConfBaseException) as err:
        text = str(err).split("Config search path:")[0]
        print(f"error: {' '.join(line.strip() for line in text.splitlines() if line.strip())}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if not _raised_before_the_task(err):
            raise
        where = err.filename if err.filename is not None else "the output folder"
        print(
            f"error: hydra.run.dir (or hydra.sweep.dir): cannot create or write {where} ({err.strerror or err}); "
            "choose a writable folder",
            file=sys.stderr,
        )
        sys.exit(2)


def _raised_before_the_task(err: BaseException) -> bool:
    """Whether ``err`` came from Hydra's own set-up (its output folder), before any code of
    phasesgd or of the script ran."""
    frame, ours = err.__traceback__, str(Path(__file__).resolve().parents[2])
    frames = []
    while frame is not None:
        frames.append(frame.tb_frame.f_code.co_filename)
        frame = frame.tb_next
    return not any(name.startswith(ours) for name in frames[1:])
