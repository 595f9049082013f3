"""The (δ, κ) phase diagram (THEORY.md §5) from a sweep, from a new sweep, or from the ODEs.

    python scripts/phase_diagram.py SWEEP_DIR [--where noise=1e-3]   draw a sweep's results
    python scripts/phase_diagram.py --run [--quick] [key=value ...]  run experiment=phase_diagram first
    python scripts/phase_diagram.py --ode [--kappa=0,1/4 --delta=-1:1/2:1/8] [--out DIR]

Writes phase_diagram.png and phase_diagram.csv (one row per cell: kappa, delta, d_values,
risk_final_mean, risk_final_se, regime_theory, regime_observed, and the evidence) into
SWEEP_DIR, the run's sweep folder, or --out. Criteria: phasesgd.phase_diagram.observe.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from fractions import Fraction
from pathlib import Path

from phasesgd.figures import reproduce
from phasesgd.phase_diagram import draw_diagram, load_sweep, ode_cells, sweep_cells, write_cells


def grid(text: str) -> list[Fraction]:
    """'0,1/4,0.5' → exact values; 'a:b:s' → a, a+s, …, b."""
    if ":" in text:
        a, b, s = (Fraction(x) for x in text.split(":"))
        return [a + i * s for i in range(int((b - a) / s) + 1)]
    return [Fraction(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", nargs="?", help="folder of a finished (or partial) sweep")
    parser.add_argument("overrides", nargs="*", help="with --run: Hydra overrides of experiment=phase_diagram")
    parser.add_argument("--run", action="store_true", help="run the phase_diagram sweep (skips finished runs)")
    parser.add_argument("--quick", action="store_true", help="with --run: the CPU-sized sweep")
    parser.add_argument("--ode", action="store_true", help="from the asymptotic ODEs alone")
    parser.add_argument("--kappa", default="0:1/2:1/8", help="--ode: κ values, list or a:b:step")
    parser.add_argument("--delta", default="-5/4:1/2:1/8", help="--ode: δ values, list or a:b:step (write --delta=-1,0: a leading minus needs the =)")
    parser.add_argument("--d-ref", type=int, default=16, help="--ode: p = round(p0 d_ref^κ)")
    parser.add_argument("--where", action="append", default=[], help="keep rows with key=value (e.g. noise=1e-3)")
    parser.add_argument("--out", help="output folder (default: the sweep folder; --ode: multirun/figures/phase_diagram_ode)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one line per run is ours
    warnings.filterwarnings("ignore", message=".*(deprecated|weights_only).*")
    start = time.perf_counter()
    if args.ode:
        out = Path(args.out or "multirun/figures/phase_diagram_ode")
        cells = ode_cells(grid(args.kappa), grid(args.delta), d_ref=args.d_ref)
        title = f"asymptotic ODEs (k = p0 = 1, γ0/p0 = 4, Δ = 1e-3, p = round(d_ref^κ), d_ref = {args.d_ref})"
    elif args.run:
        if args.sweep_dir:
            args.overrides.insert(0, args.sweep_dir)  # no folder given: the first word was an override
        png = reproduce("phase_diagram", quick=args.quick, overrides=args.overrides, sweep_dir=args.out)
        logging.info("%s written in %.0f s", png, time.perf_counter() - start)
        return
    elif args.sweep_dir:
        out = Path(args.out or args.sweep_dir)
        where = dict(w.split("=", 1) for w in args.where)
        cells = sweep_cells(load_sweep(args.sweep_dir, **where))
        title = f"measured from {args.sweep_dir}"
    else:
        parser.error("give a SWEEP_DIR, --run or --ode")
    write_cells(cells, out / "phase_diagram.csv")
    draw_diagram(cells, out / "phase_diagram.png", title)
    agree = sum(c.outcome.region is c.theory for c in cells)
    logging.info("%s: %d cells, %d agree with theory, in %.0f s", out / "phase_diagram.png", len(cells), agree, time.perf_counter() - start)


if __name__ == "__main__":
    main()
