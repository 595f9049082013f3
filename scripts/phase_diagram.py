"""The (δ, κ) phase diagram measured without the theory (docs/theory.md §5), or read back.

    python scripts/phase_diagram.py --run [--quick] [--ode] [--asymptotic] [--grow] [--kappa LIST] \
        [--delta LIST] [--d LIST] [--out DIR] [engine=sgd|chain|auto] [key=value ...]
    python scripts/phase_diagram.py DIR [--where kappa=1/2] [--where d=16] [--out DIR2]

--run measures every cell (κ, δ) at every d on raw SGD steps (--ode: the finite-size ODE at the
same γ, p, d instead; a trace's source is 'sgd' or 'ode'), reusing the traces already in
DIR/traces, then writes DIR/phase_diagram.csv (with 95 % bootstrap intervals),
DIR/threshold_sensitivity.csv (the calls with each threshold moved by half its value) and
DIR/phase_diagram.png. DIR alone re-analyses the traces of an earlier --run without measuring
anything; --where keeps the traces whose key equals the value (keys: kappa, delta, d, p, source,
k, p0, gamma0, noise, activation, replicas, seed; numbers compared exactly, 1/4 = 0.25). LIST is
values or ranges a:b:step with fractions: --delta=-5/4,-3/4,0 or --delta=-1:1/2:1/8 (a leading
minus needs the '='). Physics and grids: conf/experiment/phase_diagram.yaml; key=value are its
Hydra overrides (e.g. replicas=16 lr.gamma0=2).
--grow adds, per cell, d values beyond --d (each the last times diagram.grow.factor) while the
steps they take stay within diagram.grow.steps, ν* at the next d predicted from the last two; it
needs engine=chain or engine=auto. engine=chain runs the simulations on the exact overlap chain
(SGD's law of the order parameters, nothing of size d), engine=auto on the cheaper engine per
(κ, δ, d); a trace records its engine (key 'engine' of --where, column 'engine' of the CSV, one per d).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

from hydra.errors import HydraException

from phasesgd.experiments.diagram.measure import (
    parse_dimensions,
    parse_list,
    read_diagram,
    threshold_sensitivity,
    write_diagram,
)
from phasesgd.experiments.diagram.preset import diagram_title, reproduce_diagram
from phasesgd.experiments.presets import default_dir
from phasesgd.experiments.tables import write_csv
from phasesgd.viz.diagram import draw_diagram

log = logging.getLogger("phase_diagram")


def refuse(message: str) -> None:
    """One line on stderr, exit status 2."""
    print(f"phase_diagram.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("words", nargs="*", help="DIR to read, or with --run Hydra overrides key=value")
    parser.add_argument("--run", action="store_true", help="measure (finished traces are reused)")
    parser.add_argument("--quick", action="store_true", help="with --run: the CPU-sized grid")
    parser.add_argument("--ode", action="store_true", help="with --run: the finite-size ODE instead of simulations")
    parser.add_argument(
        "--asymptotic",
        action="store_true",
        help="with --run: add risk_asymptotic, the d → ∞ equations over the same steps",
    )
    parser.add_argument(
        "--device", default="cpu", help="with --run: torch device of the simulations and ODEs (e.g. cuda)"
    )
    parser.add_argument(
        "--grow",
        action="store_true",
        help="with --run: grow d per cell beyond --d while the config's diagram.grow budget lasts "
        "(needs engine=chain or engine=auto)",
    )
    parser.add_argument("--kappa", help="κ values (LIST)")
    parser.add_argument("--delta", help="δ values (LIST; write --delta=-1,0)")
    parser.add_argument("--d", help="input dimensions (LIST of integers)")
    parser.add_argument("--where", action="append", default=[], help="reading DIR: keep traces with key=value")
    default_out = "multirun/figures/phase_diagram[_ode|_chain|_auto][_quick]"
    parser.add_argument("--out", help=f"output folder (default {default_out}, or DIR)")
    args = parser.parse_args()
    for name in ("kappa", "delta"):
        if getattr(args, name) is not None:
            try:
                parse_list(getattr(args, name), f"--{name}")
            except ValueError as err:
                refuse(str(err))
    if args.d is not None:
        try:
            parse_dimensions(args.d)
        except ValueError as err:
            refuse(str(err))
    if any("=" not in w for w in args.where):
        refuse(f"--where: expected key=value, got {next(w for w in args.where if '=' not in w)!r}")
    return args


def read_folder(args: argparse.Namespace) -> None:
    """Reading DIR: analyse the traces of an earlier --run."""
    if len(args.words) != 1:
        refuse("give one DIR to read (a folder written by --run), or --run")
    folder = Path(args.words[0])
    if not (folder / "traces").is_dir() or not any((folder / "traces").glob("*.npz")):
        refuse(f"DIR: {folder} holds no traces (expected {folder}/traces/*.npz from phase_diagram.py --run)")
    where = dict(w.split("=", 1) for w in args.where)
    try:
        cells = read_diagram(folder, where)
    except ValueError as err:
        refuse(str(err))
    if not cells:
        refuse(f"--where: no trace under {folder} matches {' '.join(args.where)}")
    out = Path(args.out or folder)
    rows = write_diagram(cells, out / "phase_diagram.csv")
    write_csv(threshold_sensitivity(cells), out / "threshold_sensitivity.csv")
    ds = sorted({d for c in cells for d in c.d_values})
    engines = sorted({e for c in cells for e in c.engines})
    title = diagram_title("phase_diagram", cells[0].setup, ds, cells[0].source, False, ",".join(engines))
    title += f"\nread from {folder}" + (f" ({' '.join(args.where)})" if args.where else "")
    draw_diagram(rows, out / "phase_diagram.png", title)
    log.info("%s: %s", out / "phase_diagram.png", summary(rows))


def summary(rows: list[dict]) -> str:
    """'N cells, A agree with the theory, U undecided'."""
    agree = sum(r["regime_observed"] == r["regime_theory"] for r in rows)
    undecided = sum(r["regime_observed"] == "undecided" for r in rows)
    return f"{len(rows)} cells, {agree} agree with the theory, {undecided} undecided"


def main() -> None:
    args = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    start = time.perf_counter()
    if not args.run:
        read_folder(args)
        return
    bad = [w for w in args.words if "=" not in w]
    if bad:
        refuse(f"with --run the words are Hydra overrides key=value, got {bad[0]!r} (to read a folder, drop --run)")
    lists = {k: v for k, v in (("kappa", args.kappa), ("delta", args.delta), ("d", args.d)) if v is not None}
    source = "ode" if args.ode else "sgd"
    engine = next((w.split("=", 1)[1] for w in reversed(args.words) if w.split("=", 1)[0] == "engine"), "sgd")
    # Its own default folder per engine: traces of another engine at the same point are measured again.
    suffix = "_ode" if args.ode else "" if engine == "sgd" else f"_{engine}"
    out = Path(args.out) if args.out else default_dir("phase_diagram" + suffix, args.quick)
    grow = ["diagram.grow.enabled=true", "diagram.quick.grow.enabled=true"] if args.grow else []
    try:
        png = reproduce_diagram(
            "phase_diagram",
            out,
            quick=args.quick,
            overrides=[*args.words, *grow],
            lists=lists,
            source=source,
            asymptotic=args.asymptotic,
            device=args.device,
        )
    except (ValueError, HydraException) as err:  # a bad override, e.g. engine=foo, in one line
        refuse(str(err).splitlines()[0])
    with open(png.parent / "phase_diagram.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = time.perf_counter() - start
    log.info("%s written in %.0f s (phase_diagram.csv beside it): %s", png, seconds, summary(rows))


if __name__ == "__main__":
    main()
