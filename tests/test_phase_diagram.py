"""The measured phase diagram: estimators recover known exponents from synthetic data, the
measurement never consults the theory, one cell per region end to end, and the CLI refuses
bad arguments in one line."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from fractions import Fraction as F

import numpy as np
import pytest
from conftest import ROOT

from phasesgd.experiments.diagram.cells import Criteria
from phasesgd.experiments.diagram.estimators import crossing_step, entry_spread, power_law
from phasesgd.experiments.diagram.measure import (
    boundary_rows,
    diagram_rows,
    measure_diagram,
    parse_dimensions,
    parse_list,
    read_diagram,
    write_diagram,
)
from phasesgd.experiments.diagram.probes import ChainProbe, Trace, measure_point
from phasesgd.experiments.diagram.setup import RunLength, Setup
from phasesgd.theory import scaling as regimes
from phasesgd.viz.diagram import draw_diagram

DS = np.array([16, 36, 81, 169, 400, 1024])


# ----- estimators on synthetic data -----------------------------------------------------------------


@pytest.mark.parametrize("theta", [-0.5, 0.0, 0.25, 0.75])
def test_time_exponent_is_recovered_from_synthetic_risk_curves_within_its_error(theta):
    """R_r(ν) = R0 (1 − ½(1 − e^(−ν/τ))) (1 + 0.03 ξ) with τ = 2 d^(1+ϑ), 32 replicas: ν* from
    the replica mean on a log grid, ϑ from the fit, within 3 standard errors (and 0.1)."""
    rng = np.random.default_rng(7)
    nu_star = []
    for d in DS:
        tau = 2.0 * d ** (1 + theta)
        steps = np.unique(np.concatenate([[0], np.ceil(np.logspace(0, math.log10(50 * tau), 160))])).astype(int)
        clean = 0.3 * (1 - 0.5 * (1 - np.exp(-steps / tau)))
        risk = clean * (1 + 0.03 * rng.standard_normal((32, steps.size)))
        risk[:, 0] = 0.3
        nu_star.append(crossing_step(steps, risk.mean(0), 0.25))
    slope, se = power_law(DS, nu_star)
    assert 0 < se < 0.05
    assert abs(slope - 1 - theta) < max(3 * se, 0.02)
    # the exact crossing of the clean curve: 1 − ½(1 − e^(−x)) = ¾ at x = ln 2
    assert nu_star[0] == pytest.approx(2.0 * 16 ** (1 + theta) * math.log(2), rel=0.05)


@pytest.mark.parametrize("c", [-0.25, 0.0, 0.25, 0.5])
def test_concentration_exponent_is_recovered_from_synthetic_entries_within_its_error(c):
    """Q_jj = 1 + 0.3 d^(−c) ξ over 64 replicas and p = 4 entries: c within 3 standard errors."""
    rng = np.random.default_rng(11)
    spreads = [entry_spread(1 + 0.3 * d ** (-c) * rng.standard_normal((64, 4))) for d in DS]
    slope, se = power_law(DS, [s for s, _ in spreads], [e for _, e in spreads])
    assert 0 < se < 0.1
    assert abs(-slope - c) < 3 * se


def test_crossing_step_interpolates_and_power_law_needs_two_points():
    assert crossing_step(np.array([0, 10, 20]), np.array([1.0, 0.9, 0.5]), 0.3) == pytest.approx(10 * 2**0.5)
    assert crossing_step(np.array([0, 1]), np.array([1.0, 3.0]), 0.5) == pytest.approx(0.25)  # linear from ν = 0
    assert math.isnan(crossing_step(np.array([0, 1]), np.array([1.0, 1.1]), 0.5))
    assert all(math.isnan(x) for x in power_law([16], [3.0]))
    slope, se = power_law([16, 64], [1.0, 4.0])
    assert slope == pytest.approx(1.0) and math.isnan(se)


def test_lists_parse_exactly_and_malformed_ones_name_the_argument():
    assert parse_list("-5/4,-3/4,0", "--delta") == [F(-5, 4), F(-3, 4), F(0)]
    assert parse_list("-1:1/2:1/2", "--delta") == [F(-1), F(-1, 2), F(0), F(1, 2)]
    for text in ("1/0", "a", "0:1:0", "1:0:1/4", "0:1", ""):
        with pytest.raises(ValueError, match="--delta"):
            parse_list(text, "--delta")
    assert parse_dimensions("16,36") == [16, 36]
    for text in ("16", "16,1/2", "1,16"):
        with pytest.raises(ValueError, match="--d"):
            parse_dimensions(text)


# ----- no theory in the measurement -----------------------------------------------------------------


def _forbid_theory(monkeypatch):
    """classify and natural_time_exponent raise, in every phasesgd module that imported them
    (Scaling's region and clock included), for every point but κ = δ = 0: the finite-size ODE
    is solved there on t = ν/d at the cell's γ and p (probes.finite_ode_physics), which names
    no cell. The test's cells avoid that point, so a measurement that consulted the theory
    about its cell would raise."""

    def forbid(original):
        def guarded(kappa, delta, *args, **kwargs):
            if regimes.exact(kappa) != 0 or regimes.exact(delta) != 0:
                raise AssertionError("the measurement consulted the theory")
            return original(kappa, delta, *args, **kwargs)

        return guarded

    for name, module in list(sys.modules.items()):
        if name.startswith("phasesgd") and module is not None:
            for attr in ("classify", "natural_time_exponent"):
                if hasattr(module, attr):
                    monkeypatch.setattr(module, attr, forbid(getattr(module, attr)))


OBSERVED = (
    "regime_observed",
    "theta_observed",
    "theta_observed_se",
    "concentration_exponent",
    "concentration_exponent_se",
    "theta_observed_ci95_low",
    "theta_observed_ci95_high",
    "concentration_exponent_ci95_low",
    "concentration_exponent_ci95_high",
    "crossing_sign",
    "theta_note",
    "nu_star",
    "risk_final_mean",
    "risk_final_se",
    "level",
)


def test_no_observed_column_changes_when_the_theory_raises(monkeypatch, tmp_path):
    """A 2-cell, 3-d measured diagram, once as is and once with the theory replaced by
    functions that raise: every measured column is identical; the ODE measures too."""
    setup = Setup(replicas=8)
    args = ([F(0)], [F(-3, 4), F(1, 4)], [16, 25, 36])
    plain = [cell.row() for cell in measure_diagram(*args, tmp_path / "plain", setup)]
    with monkeypatch.context() as m:
        _forbid_theory(m)
        with pytest.raises(AssertionError, match="consulted the theory"):
            regimes.Scaling(kappa=0, delta=0.25).region  # noqa: B018  (the patch is in force)
        patched = [cell.row() for cell in measure_diagram(*args, tmp_path / "patched", setup)]
        ode_cells = measure_diagram([F(0)], [F(-1, 4)], [16, 25, 36], tmp_path / "ode", setup, source="ode")
        patched_ode = [cell.row() for cell in ode_cells]
    assert [{k: r[k] for k in OBSERVED} for r in patched] == [{k: r[k] for k in OBSERVED} for r in plain]
    assert patched_ode[0]["regime_observed"] in ("plateau", "perfect", "bad")
    assert patched_ode[0]["concentration_exponent"] == "nan"  # the ODE cannot see concentration


# ----- one cell per region, end to end ----------------------------------------------------------------


QUICK_D = [16, 36, 81, 169]


@pytest.mark.parametrize(
    "kappa, delta, ds, expected",
    [
        # at d ≤ 169 the 95 % interval of ϑ (0.12–0.27) still straddles theta_margin: undecided
        (F(0), F(1, 4), [*QUICK_D, 400], "perfect"),
        (F(0), F(0), QUICK_D, "plateau"),
        pytest.param(F(0), F(-1, 4), QUICK_D, "bad", marks=pytest.mark.slow),
        (F(0), F(-1), QUICK_D, "no_ode"),
    ],
)
def test_one_cell_per_region_is_observed_as_its_region(kappa, delta, ds, expected, tmp_path):
    """Called only when every interval is clear of the thresholds, and each interval
    contains its point estimate."""
    (cell,) = measure_diagram([kappa], [delta], ds, tmp_path, Setup(replicas=32))
    assert cell.regime_observed == expected, cell
    for name in ("theta_observed", "concentration_exponent"):
        low, high = getattr(cell, f"{name}_ci95")
        assert low <= getattr(cell, name) <= high, (name, low, high)
    if expected == "no_ode":  # the spread of single entries grows with d
        assert cell.concentration_exponent + 3 * cell.concentration_exponent_se < 0
    if expected in ("perfect", "plateau"):  # c = ½ (docs/theory.md §5), within 3 s.e. or 0.35
        assert abs(cell.concentration_exponent - 0.5) < max(3 * cell.concentration_exponent_se, 0.35)
        assert cell.concentration_exponent_ci95[0] > Criteria().min_concentration


def test_the_finite_size_ode_measures_the_blue_line_time_exponent(tmp_path):
    """κ = δ = 0: the finite ODE's ν* grows like d (ϑ = 0) within 0.1, and it learns."""
    (cell,) = measure_diagram([F(0)], [F(0)], [16, 64, 256], tmp_path, Setup(replicas=4), source="ode")
    assert abs(cell.theta_observed) < 0.1 and cell.regime_observed == "plateau"
    assert math.isnan(cell.concentration_exponent)


# ----- files, drawing, reading back ----------------------------------------------------------------


def test_traces_round_trip_and_the_folder_reads_back_with_where(tmp_path):
    setup = Setup(replicas=4)
    cells = measure_diagram([F(0)], [F(-1), F(-3, 4)], [16, 25], tmp_path, setup)
    trace = measure_point(F(0), F(-1), 16, setup)
    saved = tmp_path / "one.npz"
    trace.save(saved)
    back = Trace.load(saved)
    assert back.setup == setup and back.kappa == 0 and back.delta == -1 and back.source == "sgd"
    assert np.array_equal(back.risk, trace.risk, equal_nan=True)
    again = read_diagram(tmp_path)
    assert [c.row() for c in again] == [c.row() for c in sorted(cells, key=lambda c: c.delta)]
    assert [c.delta for c in read_diagram(tmp_path, {"delta": "-3/4"})] == [F(-3, 4)]
    with pytest.raises(ValueError, match="--where: unknown key 'kapa'"):
        read_diagram(tmp_path, {"kapa": "0"})
    rows = write_diagram(cells, tmp_path / "phase_diagram.csv")
    with open(tmp_path / "phase_diagram.csv") as f:
        read = list(csv.DictReader(f))
    for row in read:
        for key, value in row.items():
            lists = ("d_values", "p_values", "nu_star", "crossing_sign")
            if key not in ("regime_theory", "regime_observed", "source", "engine", "theta_note", *lists):
                float(value)  # every other column is a number
        assert all(part.isdigit() for part in row["d_values"].split(";"))
        assert row["engine"] == "sgd;sgd"
    draw_diagram(rows, tmp_path / "phase_diagram.png", "test")
    assert (tmp_path / "phase_diagram.png").stat().st_size > 10_000


def test_a_trace_written_before_source_and_run_length_reads_back_with_its_setup(tmp_path):
    """Earlier trace files said ``mode`` and ``clock`` and held the setup's flat summary only."""
    meta = {"kappa": "1/4", "delta": "-1/2", "d": 16, "p": 2, "mode": "ode", "nu_star": 3.0, "failed": False}
    meta |= {"clock": {"epsilon": 0.25, "concentration_time": 8.0, "run_length": 64.0, "max_steps": 2_000_000}}
    meta |= {"k": 1, "p0": 1, "gamma0": 4.0, "noise": 1e-3, "activation": "erf", "replicas": 4, "seed": 0}
    arrays = {"steps": np.arange(3), "risk": np.ones((4, 3)), "diag_q": np.full((4, 2), np.nan)}
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps(meta)), **arrays)
    trace = Trace.load(tmp_path / "old.npz")
    assert (trace.source, trace.kappa, trace.run_length.end_time) == ("ode", F(1, 4), 64.0)
    assert trace.setup == Setup(replicas=4)  # the preset's setup: such a trace is reused


def test_the_boundary_is_where_the_concentration_exponent_falls_through_zero_with_a_bootstrap_interval():
    """c(δ) = 0.4, 0.2, −0.1, −0.3 at −δ = ¼ … 1: the point crossing of c = 0 is at −δ = 2/3;
    resamples c_b = c + 0.05 ξ (independent per cell) give an interval around it, narrower than
    the cells' spacing; a scan that never crosses reads NaN, with an interval out to +∞;
    the predicted crossing is NaN by default and follows a predicted c when one is given."""
    rng = np.random.default_rng(3)

    class Cell:
        def __init__(self, delta, c, spread=0.05, kappa=F(0)):
            self.kappa, self.delta, self.source = kappa, F(delta), "sgd"
            self.concentration_exponent, self.concentration_exponent_se = c, spread
            self.bootstrap = type("B", (), {"concentration": c + spread * rng.standard_normal(1000)})

    cells = [Cell(-0.25, 0.4), Cell(-0.5, 0.2), Cell(-0.75, -0.1), Cell(-1, -0.3)]
    cells += [Cell(-0.25, 0.5, kappa=F(1)), Cell(-0.5, 0.45, 0.2, kappa=F(1))]
    zero, one = boundary_rows(cells)
    assert float(zero["boundary"]) == pytest.approx(0.5 + 0.25 * 2 / 3, rel=1e-3)
    low, high = float(zero["boundary_ci95_low"]), float(zero["boundary_ci95_high"])
    assert 0.6 < low < float(zero["boundary"]) - 0.02 and float(zero["boundary"]) + 0.02 < high < 0.8
    assert (one["theory_kappa_plus_half"], one["published_half_kappa_plus_one"]) == (1.5, 1.0)
    assert zero["boundary_predicted"] == "nan" and zero["threshold_c"] == 0.0
    assert one["boundary"] == "nan" and one["boundary_ci95_high"] == "inf"  # c stays above 0 in the scan
    (predicted,) = boundary_rows(cells[:4], predicted=lambda cell: cell.concentration_exponent - 0.1)
    assert float(predicted["boundary_predicted"]) == pytest.approx(0.5 + 0.25 / 3, rel=1e-3)


# ----- the engines of the simulations ------------------------------------------------------------------


def _tensors(obj, seen=None):
    """Every tensor reachable from ``obj`` through attributes, dicts, lists and modules."""
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif isinstance(obj, torch.nn.Module):
        children = [*obj.parameters(), *obj.buffers(), *vars(obj).values()]
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("phasesgd"):
        children = list(vars(obj).values())
    else:
        return []
    return [t for child in children for t in _tensors(child, seen)]


def test_a_chain_trace_agrees_with_an_sgd_trace_of_the_same_cell_within_their_replica_spread():
    """κ = δ = 0 at d = 36, 32 replicas from the same Ω(0): at every step both traces measured,
    the replica-mean risks differ by less than 4 standard errors of the difference; so do the
    final risks and the mean Q_jj at ν_c, and ν* agrees within 25%."""
    setup = Setup(replicas=32)
    sgd, chain = (measure_point(F(0), F(0), 36, setup, engine=engine) for engine in ("sgd", "chain"))
    assert (sgd.engine, chain.engine, chain.source) == ("sgd", "chain", "sgd")
    assert not sgd.failed and not chain.failed
    np.testing.assert_allclose(sgd.risk[:, 0], chain.risk[:, 0], rtol=1e-12)  # the drawn weights' Ω(0)
    common = sorted(set(sgd.steps.tolist()) & set(chain.steps.tolist()))[1:]
    assert len(common) > 20

    def z(a, b):
        se = np.sqrt(a.var(0, ddof=1) / a.shape[0] + b.var(0, ddof=1) / b.shape[0])
        return np.abs(a.mean(0) - b.mean(0)) / se

    at = lambda trace: trace.risk[:, np.searchsorted(trace.steps, common)]  # noqa: E731
    assert z(at(sgd), at(chain)).max() < 4
    assert z(sgd.risk[:, -1:], chain.risk[:, -1:])[0] < 4
    assert z(sgd.diag_q.mean(1, keepdims=True), chain.diag_q.mean(1, keepdims=True))[0] < 4
    assert abs(chain.nu_star / sgd.nu_star - 1) < 0.25


def test_a_chain_trace_at_a_million_dimensions_allocates_nothing_of_size_d():
    """d = 10⁶ with 72 replicas: past Chain.draws_weights, so the probe's networks hold no rows
    and no tensor it reaches grows with d (the largest, a cache-sized block of random numbers, is
    the same at d = 10⁸); the whole trace measures on the chain."""
    d, setup = 10**6, Setup(replicas=72)

    def largest(dim: int) -> int:
        probe = ChainProbe(F(0), F(-3, 8), dim, setup)
        assert probe.advance_to(64)
        return max(t.numel() for t in _tensors(probe))

    assert largest(d) == largest(100 * d) < d // 4
    probe = ChainProbe(F(0), F(-3, 8), d, setup)
    assert probe.advance_to(64)
    risk, diag = probe.observe()
    assert risk.shape == (72,) and diag.shape == (72, 1) and np.isfinite(risk).all()
    trace = measure_point(F(0), F(-3, 8), d, setup, engine="chain")
    assert trace.engine == "chain" and not trace.failed and math.isfinite(trace.nu_star)
    assert trace.meta()["engine"] == "chain"


def test_auto_picks_the_engine_per_d_and_the_csv_and_where_say_which(tmp_path):
    """engine=auto with p = k = 1 is SGD at d = 16 and the chain at d = 25 (4(p+k)² < p d); the
    CSV's engine column lists both; --where engine=chain keeps the chain's d; a trace of
    another engine is measured again; a trace without an engine field reads as 'sgd'."""
    setup, length = Setup(replicas=4), Criteria(run_length=RunLength(end_time=8))
    args = ([F(0)], [F(-1, 2)], [16, 25], tmp_path)
    (cell,) = measure_diagram(*args, setup, length, source="auto")
    assert cell.engines == ("sgd", "chain")
    (row,) = write_diagram([cell], tmp_path / "phase_diagram.csv")
    with open(tmp_path / "phase_diagram.csv") as f:
        assert next(csv.DictReader(f))["engine"] == row["engine"] == "sgd;chain"
    (chain_only,) = read_diagram(tmp_path, {"engine": "chain"})
    assert chain_only.d_values == (25,) and chain_only.engines == ("chain",)
    (again,) = measure_diagram(*args, setup, length, source="chain")
    assert again.engines == ("chain", "chain")
    path = tmp_path / "traces" / "sgd_kappa=0_delta=-1:2_d=16.npz"
    with np.load(path) as f:
        arrays = {key: f[key] for key in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    del meta["engine"]  # as written before there were two engines
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    assert Trace.load(path).engine == "sgd"
    assert [c.d_values for c in read_diagram(tmp_path, {"engine": "sgd"})] == [(16,)]
    (mixed,) = read_diagram(tmp_path)
    assert diagram_rows([mixed])[0]["engine"] == "sgd;chain"
    with pytest.raises(ValueError, match="engine"):
        measure_point(F(0), F(0), 16, setup, engine="weights")


def test_an_engine_override_reaches_every_run_of_reproduce_and_the_diagram():
    """``reproduce.py NAME engine=chain``: every job of every sweep preset carries the override
    (figures.reproduce appends it to the preset's), one composes to a run on the chain (the config
    train.py builds from, and the engine run_size resolves as the build does), and the diagram
    presets read the same override."""
    from phasesgd.app.build import run_size
    from phasesgd.experiments.diagram.preset import _diagram_config
    from phasesgd.experiments.presets import PRESETS
    from phasesgd.experiments.sweeps import compose_config, sweep_jobs

    first = []
    for name, preset in PRESETS.items():
        if preset.kind == "diagram":
            assert _diagram_config(name, True, ["engine=chain"])[2] == "chain"
            continue
        jobs = sweep_jobs([f"experiment={name}", *preset.quick, "engine=chain"])
        assert jobs and all(job[-1] == "engine=chain" for job in jobs), name
        first.append(jobs[0])
    cfg = compose_config(first[0])
    assert cfg.engine.name == cfg.module.engine == "chain", first[0]
    size = run_size(cfg)
    assert size is None or size.engine == "chain", first[0]


# ----- the command line ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_arguments_are_refused_in_one_line_with_status_2_and_nothing_is_created(tmp_path):
    measure_diagram([F(0)], [F(-1)], [16, 25], tmp_path / "sweep", Setup(replicas=2))
    script = str(ROOT / "scripts" / "phase_diagram.py")
    cases = {
        "--delta": [script, "--run", "--delta=-1/0", "--out", str(tmp_path / "new")],
        "--d": [script, "--run", "--d", "16", "--out", str(tmp_path / "new")],
        "--where": [script, str(tmp_path / "sweep"), "--where", "kapa=0"],
        "DIR": [script, str(tmp_path / "missing")],
        "DIR ": [script, str(tmp_path / "sweep" / "traces")],  # a folder without traces/
        "engine": [script, "--run", "engine=weights", "--out", str(tmp_path / "new")],
    }
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = {
        name: subprocess.Popen([sys.executable, *cmd], cwd=tmp_path, env=env, **pipes) for name, cmd in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err[-2000:])
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and name.strip() in lines[0], (name, err)
    assert not (tmp_path / "missing").exists() and not (tmp_path / "new").exists()
