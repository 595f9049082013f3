"""Reproduce one of the paper's figures: `python scripts/reproduce.py NAME [--quick] [key=value ...]`.

NAME is a preset of phasesgd.experiments.presets (= conf/experiment/NAME.yaml): blue_line_noise,
blue_line_d, green_region, lr_family, orange_region, regions, wide_students, phase_diagram,
no_ode_boundary. The command runs the preset's sweep in this process (finished runs are
skipped), solves the ODE lines and writes NAME.png and NAME.csv into the sweep folder (default
multirun/figures/NAME[_quick]); the diagram presets measure the phase diagram and write
phase_diagram.png and phase_diagram.csv (no_ode_boundary also no_ode_boundary.csv). --quick is
the CPU-sized version (said so in the title). Options and overrides may come in any order:

    python scripts/reproduce.py blue_line_noise --quick replicas=2
    python scripts/reproduce.py phase_diagram replicas=16 --quick

engine=sgd|chain|auto, like any override, reaches every run of the sweep (train.py's config
group engine) and the diagram's simulations; a run's folder name then carries it:

    python scripts/reproduce.py blue_line_noise --quick engine=chain

On a cluster, run the sweep with Hydra and draw afterwards:

    python scripts/train.py -m experiment=NAME hydra/launcher=slurm hydra.sweep.dir=DIR
    python scripts/reproduce.py NAME --sweep-dir DIR --no-run
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings

from phasesgd.experiments.figures import reproduce
from phasesgd.experiments.presets import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(PRESETS), help="figure preset")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. replicas=16 (sweeps: d=100,300)")
    parser.add_argument("--quick", action="store_true", help="the scaled-down CPU version")
    parser.add_argument("--sweep-dir", help="folder of the runs and the figure (default multirun/figures/NAME[_quick])")
    parser.add_argument("--no-run", action="store_true", help="only draw from the runs already in --sweep-dir")
    args = parser.parse_intermixed_args()
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"reproduce.py: error: overrides are key=value, got {bad[0]!r}", file=sys.stderr)
        raise SystemExit(2)
    # One handler, on the root logger: force replaces any that an import installed, so each line prints once.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one line per run is ours
    warnings.filterwarnings("ignore", message=".*(deprecated|weights_only).*")
    start = time.perf_counter()
    try:
        png = reproduce(
            args.name, quick=args.quick, sweep_dir=args.sweep_dir, overrides=args.overrides, run=not args.no_run
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"reproduce.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.info("%s written in %.0f s (data beside it)", png, time.perf_counter() - start)


if __name__ == "__main__":
    main()
