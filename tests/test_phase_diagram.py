"""The phase diagram: regions from theory (exact arithmetic), the measured outcome on
synthetic curves of each kind, reading a sweep into cells and the CSV, the ODE mode."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from phasesgd.phase_diagram import CSV_COLUMNS, Curve, draw_diagram, load_sweep, observe, ode_cells, sweep_cells, write_cells
from phasesgd.regimes import Region, classify

PERFECT, PLATEAU, BAD, NO_ODE = Region.PERFECT, Region.PLATEAU, Region.BAD, Region.NO_ODE


# ----- theory ------------------------------------------------------------------------------------------


def table(k8: int, d8: int) -> Region:
    """THEORY §5's table for κ = k8/8, δ = d8/8, in integers (rows in the table's order)."""
    if k8 + d8 > 0:
        return PERFECT
    if k8 + d8 == 0:
        return PLATEAU
    if k8 < -d8 and -2 * d8 < k8 + 8:
        return BAD
    return NO_ODE


@pytest.mark.parametrize("k8", range(0, 9))
def test_theory_regions_on_a_grid_of_eighths_as_fractions_floats_and_strings(k8):
    for d8 in range(-16, 9):
        expected = table(k8, d8)
        assert classify(Fraction(k8, 8), Fraction(d8, 8)) is expected
        assert classify(k8 / 8, d8 / 8) is expected  # binary floats of eighths are exact
        assert classify(f"{k8}/8", f"{d8}/8") is expected


@pytest.mark.parametrize(
    "kappa, delta, region",
    [
        (0.1, -0.1, PLATEAU), (0.7, -0.7, PLATEAU), ("1/3", "-1/3", PLATEAU), (Fraction(1, 3), Fraction(-1, 3), PLATEAU),
        (1 / 3, -1 / 3, PLATEAU), (0.1, -0.09, PERFECT), (0.1, -0.11, BAD), ("1/3", "-0.3333", PERFECT),
        (0, -0.5, NO_ODE), (0, "-1/2", NO_ODE), (0, -0.4999, BAD), (0.5, -0.75, NO_ODE), (0.5, -0.7499, BAD),
        ("1/3", "-2/3", NO_ODE), ("1/3", "-0.6666", BAD), (0.25, -0.625, NO_ODE), (1.1, -2.2, NO_ODE),
        (0, 0.5, PERFECT), (0, -0.375, BAD), (0.25, -0.5, BAD), (0.5, -0.5, PLATEAU),
    ],
)  # fmt: skip
def test_theory_boundaries_are_exact(kappa, delta, region):
    assert classify(kappa, delta) is region


# ----- the measured outcome on synthetic curves ---------------------------------------------------------------

T = np.concatenate([[0.0], np.logspace(-2, 2, 41)])


def curve(d: int, risk_of_t, q_spread: float, replicas: int = 32, seed: int = 0, diverged: bool = False) -> Curve:
    """Replicas of ``risk_of_t`` with relative fluctuations q_spread, and q with that spread."""
    rng = np.random.default_rng(seed + d)
    mean = risk_of_t(T, d)
    risk = mean * (1 + q_spread * rng.standard_normal((replicas, T.size)))
    q = 1 + q_spread * rng.standard_normal(replicas)
    return Curve(d, T, np.abs(risk), q, diverged)


def concentrated(d: int) -> float:
    return 2.0 / np.sqrt(d)  # spread ∝ d^(−1/2)


R0 = 0.3
KINDS = {
    # risk falls to a noise floor ∝ d^(−1/4) (green region at finite d)
    PERFECT: lambda t, d: R0 * np.exp(-t / 3) + 1e-3 * R0 * (d / 100) ** -0.25,
    # risk settles at a d-independent level (blue line)
    PLATEAU: lambda t, d: R0 * np.exp(-t / 3) + 0.05 * R0,
    # risk rises above its start (orange region)
    BAD: lambda t, d: R0 * (1.6 - 0.6 * np.exp(-t / 5)),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_measured_outcome_of_each_kind_from_two_d(kind):
    curves = [curve(d, KINDS[kind], concentrated(d)) for d in (100, 1600)]
    assert observe(curves).region is kind


def test_no_ode_when_the_replica_spread_does_not_shrink_or_a_run_diverges():
    spread_stays = [curve(d, KINDS[BAD], 0.3) for d in (100, 1600)]
    assert observe(spread_stays).region is NO_ODE
    diverged = [curve(100, KINDS[PLATEAU], concentrated(100)), curve(1600, KINDS[PLATEAU], concentrated(1600), diverged=True)]
    assert observe(diverged).region is NO_ODE
    o = observe(spread_stays)
    assert o.spread_ratio > 0.5  # the evidence is returned with the verdict


def test_bad_when_learning_fades_with_d_even_if_the_risk_is_below_its_start():
    """Finite-d bad learning: the risk still drops, but less and less as d grows."""
    fading = lambda t, d: R0 * np.exp(-t / 3) + 0.1 * R0 * (d / 100) ** 0.5  # noqa: E731
    o = observe([curve(d, fading, concentrated(d)) for d in (100, 1600)])
    assert o.region is BAD and o.level < 0.5 * o.initial and o.d_slope > 0.4


def test_single_curves_use_time_criteria_like_the_ode_mode():
    falls_forever = lambda t, d: R0 * np.exp(-t / 3) + 1e-6 * R0 / (1 + t)  # noqa: E731
    assert observe([curve(100, falls_forever, 0.0, replicas=1)]).region is PERFECT
    assert observe([curve(100, KINDS[PLATEAU], 0.0, replicas=1)]).region is PLATEAU
    assert observe([curve(100, KINDS[BAD], 0.0, replicas=1)]).region is BAD
    # still falling, but not orders of magnitude below the start: a plateau not yet reached
    slow = lambda t, d: R0 * (0.2 + 0.8 * np.exp(-t / 30))  # noqa: E731
    assert observe([curve(100, slow, 0.0, replicas=1)]).region is PLATEAU


# ----- a sweep on disk → cells → CSV and picture ----------------------------------------------------------


def fake_run(folder: Path, kappa: float, delta: float, d: int, risk_of_t, spread: float, noise: float = 1e-3, status: str = "finished") -> None:
    """The files a run leaves: summary.json (one row) and results.npz."""
    c = curve(d, risk_of_t, spread, replicas=8)
    folder.mkdir(parents=True)
    Q = np.broadcast_to(np.eye(2), (8, 2, 2)) * c.q[:, None, None]
    np.savez(folder / "results.npz", t=c.t, risk=c.risk, Q=Q)
    row = {"kappa": kappa, "delta": delta, "d": d, "p": 2, "k": 1, "noise": noise, "gamma0": 4.0, "t_max": 100.0,
           "seed": 0, "replicas": 8, "risk_final_mean": float(c.risk[:, -1].mean()), "status": status}
    (folder / "summary.json").write_text(json.dumps(row))


@pytest.fixture
def sweep(tmp_path):
    for kappa, delta, kind in [(0, 0.25, PERFECT), (0, 0, PLATEAU), (0, -0.25, BAD), (0.5, -0.5, PLATEAU)]:
        for d in (64, 1024):
            fake_run(tmp_path / f"kappa={kappa},lr.delta={delta},d={d}", kappa, delta, d, KINDS[kind], concentrated(d))
    for d in (64, 1024):
        fake_run(tmp_path / f"kappa=0,lr.delta=-0.75,d={d}", 0, -0.75, d, KINDS[BAD], 0.3)
    return tmp_path


def test_sweep_is_read_into_cells_a_csv_and_a_picture(sweep):
    rows = load_sweep(sweep)
    assert len(rows) == 10 and all(Path(r["path"], "results.npz").exists() for r in rows)
    assert len(load_sweep(sweep, kappa="1/2")) == 2 and len(load_sweep(sweep, d=64, delta=0.25)) == 1
    cells = sweep_cells(rows)
    assert [(c.kappa, c.delta) for c in cells] == sorted((c.kappa, c.delta) for c in cells) and len(cells) == 5
    assert all(c.outcome.region is c.theory for c in cells), [(c.kappa, c.delta, c.outcome) for c in cells]
    write_cells(cells, sweep / "phase_diagram.csv")
    with open(sweep / "phase_diagram.csv") as f:
        table_rows = list(csv.DictReader(f))
    assert tuple(table_rows[0]) == CSV_COLUMNS
    cell = next(r for r in table_rows if r["kappa"] == "0.5")
    assert (cell["delta"], cell["d_values"], cell["regime_theory"], cell["regime_observed"]) == ("-0.5", "64;1024", "plateau", "plateau")
    assert float(cell["risk_final_mean"]) > 0 and float(cell["risk_final_se"]) > 0
    draw_diagram(cells, sweep / "phase_diagram.png", "test")
    assert (sweep / "phase_diagram.png").stat().st_size > 10_000


def test_a_cell_that_mixes_noise_levels_is_refused(sweep):
    fake_run(sweep / "other", 0, 0, 64, KINDS[PLATEAU], 0.1, noise=1e-2)
    with pytest.raises(ValueError, match="mixes"):
        sweep_cells(load_sweep(sweep))
    assert len(sweep_cells(load_sweep(sweep, noise=1e-3))) == 5


# ----- from the asymptotic ODEs ----------------------------------------------------------------------------------


def test_ode_mode_reproduces_the_theory_and_solves_each_region_once():
    cells = ode_cells([0, "1/8"], ["-3/4", "-1/2", "-1/4", "-1/8", 0, "1/4"], t_max=100.0)
    assert len(cells) == 12
    assert all(c.outcome.region is c.theory for c in cells), [(c.kappa, c.delta, c.outcome) for c in cells]
    plateau = next(c for c in cells if c.theory is PLATEAU)
    assert 1e-4 < plateau.risk_final_mean < 0.1 * plateau.outcome.initial  # settled at a level ∝ Δ
    assert all(np.isnan(c.risk_final_mean) for c in cells if c.theory is NO_ODE)


def test_phase_diagram_script_ode_mode_writes_csv_and_png(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "phase_diagram.py"), "--ode", "--kappa=0", "--delta=-1/2,-1/4,0,1/4", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "phase_diagram.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["regime_observed"] for r in rows] == ["no_ode", "bad", "plateau", "perfect"]
    assert [r["regime_theory"] for r in rows] == ["no_ode", "bad", "plateau", "perfect"]
    assert (tmp_path / "phase_diagram.png").exists()
