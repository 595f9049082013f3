"""Reproduce one of the paper's figures: `python scripts/reproduce.py NAME [--quick] [key=value ...]`.

NAME is a preset of phasesgd.figures (= conf/experiment/NAME.yaml): blue_line_noise,
blue_line_d, green_region, lr_family, orange_region, regions, phase_diagram. The command
runs the preset's sweep in this process (finished runs are skipped), solves the ODE lines
and writes NAME.png and NAME.csv (phase_diagram.csv for the diagram) into the sweep folder
(default multirun/figures/NAME[_quick]). --quick is the CPU-sized version (smaller d, t_max,
replicas; said so in the title). On a cluster, run the sweep with Hydra and draw afterwards:

    python scripts/train.py -m experiment=NAME hydra/launcher=slurm hydra.sweep.dir=DIR
    python scripts/reproduce.py NAME --sweep-dir DIR --no-run
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

from phasesgd.figures import PRESETS, reproduce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(PRESETS), help="figure preset")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. replicas=16 (sweeps: d=100,300)")
    parser.add_argument("--quick", action="store_true", help="the scaled-down CPU version")
    parser.add_argument("--sweep-dir", help="folder of the runs and the figure (default multirun/figures/NAME[_quick])")
    parser.add_argument("--no-run", action="store_true", help="only draw from the runs already in --sweep-dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one line per run is ours
    warnings.filterwarnings("ignore", message=".*(deprecated|weights_only).*")
    start = time.perf_counter()
    png = reproduce(args.name, quick=args.quick, sweep_dir=args.sweep_dir, overrides=args.overrides, run=not args.no_run)
    logging.info("%s written in %.0f s (data beside it)", png, time.perf_counter() - start)


if __name__ == "__main__":
    main()
