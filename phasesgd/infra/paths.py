"""Where the project's own folders are. The Hydra configs (``conf/``) and the scripts are
not packaged: they are used from the checkout beside the package, which is why the
install is editable (``pip install -e .``)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # phasesgd/infra/paths.py → the checkout


def config_dir() -> Path:
    """The folder of the Hydra configs, ``<checkout>/conf``; a clear error where it is missing."""
    conf = PROJECT_ROOT / "conf"
    if not (conf / "config.yaml").is_file():
        raise FileNotFoundError(
            f"phasesgd's Hydra configs are not at {conf}: the configs live in the checkout, not in the "
            "installed package; install with `pip install -e .` from a clone of the repository"
        )
    return conf
