"""How a bad config reaches the user: one line naming the key, exit status 2, no traceback."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.errors import ConfigCompositionException, InstantiationException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from ..infra.validation import ConfigError


@contextmanager
def config_errors() -> Iterator[None]:
    """Turn the ways a bad config surfaces into one :class:`ConfigError` line: a missing
    value (``???``) or a broken interpolation, and a constructor's check raised inside
    Hydra's ``instantiate`` (which wraps it in an ``InstantiationException``). Our
    constructors name their keys in full; a message of another library's constructor
    (Lightning's ``Trainer`` and its ``MisconfigurationException``, a logger) is prefixed
    with the block's key (``trainer: …``)."""
    try:
        yield
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError)) or type(cause).__name__ == "MisconfigurationException":
            block = re.search(r"^full_key: (\S+)$", str(err), re.MULTILINE)
            prefix = f"{block.group(1)}: " if block and not _raised_by_phasesgd(cause) else ""
            raise ConfigError(prefix + (str(cause).strip().splitlines() or [type(cause).__name__])[0]) from None
        raise


def _raised_by_phasesgd(err: BaseException) -> bool:
    """Whether ``err`` was raised in phasesgd's own code (whose messages name their keys)."""
    frame, package = err.__traceback__, str(Path(__file__).resolve().parents[1])
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code.co_filename.startswith(package)


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
