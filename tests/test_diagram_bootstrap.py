"""The diagram's 95 % intervals (phasesgd.experiments.diagram.bootstrap) and the decisions that
use them: the vectorised resampling agrees with the single-sample estimators, the replica
bootstrap covers known exponents of synthetic cells at its nominal level while the old ±1 s.e.
and a bootstrap of single entries do not, a cell is called only when its intervals clear every
threshold it uses, a clock that changes mechanism is not fitted, and the threshold table says
which calls move."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction as F
from types import SimpleNamespace

import numpy as np
import pytest

from phasesgd.experiments.diagram.bootstrap import (
    cell_rng,
    crossing_steps,
    interval,
    pooled_spreads,
    replica_counts,
    slopes,
)
from phasesgd.experiments.diagram.calibration import Synthetic, coverage
from phasesgd.experiments.diagram.cells import SIGN_CHANGE, Criteria, Observables, analyse_cell, decide
from phasesgd.experiments.diagram.estimators import crossing_step, entry_spread, power_law
from phasesgd.experiments.diagram.measure import threshold_sensitivity
from phasesgd.experiments.diagram.probes import Trace
from phasesgd.experiments.diagram.setup import Setup
from phasesgd.viz.diagram import LABELS, draw_diagram


def test_the_vectorised_resampling_agrees_with_the_single_sample_estimators():
    rng = np.random.default_rng(1)
    steps = np.array([0, 1, 2, 3, 5, 8, 13, 20, 30, 50, 80])
    curves = 1 + np.cumsum(rng.normal(0, 0.1, (50, steps.size)), 1)
    curves[:, 0] = 1
    nu, sign = crossing_steps(steps, curves, 0.25)
    expected = [crossing_step(steps, row, 0.25) for row in curves]
    np.testing.assert_allclose(nu, expected, rtol=1e-12)
    crossed = np.isfinite(nu)
    assert crossed.sum() > 30 and (~crossed).any() and (sign[~crossed] == 0).all()
    first = np.argmax(np.abs(curves - 1) >= 0.25, 1)
    assert (sign[crossed] == np.sign(curves[crossed, first[crossed]] - 1)).all()
    entries = rng.normal(size=(12, 5))
    counts = replica_counts(rng, 12, 40)
    assert (counts.sum(1) == 12).all()
    drawn = [np.repeat(np.arange(12), c.astype(int)) for c in counts]
    np.testing.assert_allclose(pooled_spreads(counts, entries), [entry_spread(entries[i])[0] for i in drawn])
    y = np.exp(rng.normal(size=(3, 4)))
    ds = [16, 36, 81, 169]
    np.testing.assert_allclose(slopes(ds, y), [power_law(ds, row)[0] for row in y])
    assert interval(np.r_[np.arange(100.0), np.nan])[0] == 1.0  # a missing resample counts against both ends
    assert math.isnan(interval(np.full(5, np.nan))[0])


@pytest.mark.parametrize("cell", [Synthetic(theta=0.0, concentration=0.5), Synthetic(theta=-0.5, concentration=0.0)])
def test_replica_bootstrap_intervals_cover_known_exponents_and_the_old_errors_do_not(cell):
    """300 synthetic quick cells (d = 16 … 169, 32 replicas, p = 4 … 13 entries that share a
    per-replica scale and shift): the bootstrap's 95 % intervals of ϑ and c contain the truth
    in ≥ 90 % of them; the old ±1 s.e. in ≤ 70 %; resampling the entries of each unit on their
    own (as if a replica's entries were independent) covers c in ≤ 85 %."""
    result = coverage(cell, repetitions=300, resamples=300, seed=5)
    assert result.theta_bootstrap >= 0.90 and result.concentration_bootstrap >= 0.90, result
    assert result.theta_se1 <= 0.70 and result.concentration_se1 <= 0.70, result
    assert result.concentration_entry_bootstrap <= 0.85, result
    assert 0.05 < result.theta_bootstrap_width < 0.3 and 0.1 < result.concentration_bootstrap_width < 0.4


def _observed(**changes) -> Observables:
    """A learnt cell that concentrates, on a clock growing faster than d: perfect."""
    base = Observables(0.5, 0.5, 1e-3, 0.0, False, "sgd", (0.4, 0.6), (0.4, 0.6), (5e-4, 2e-3), (-0.05, 0.05))
    return replace(base, **changes)


def test_a_cell_is_called_only_when_every_interval_it_uses_clears_its_threshold():
    c = Criteria()
    assert decide(_observed(), c) == "perfect"
    assert decide(_observed(theta_ci=(0.1, 0.2)), c) == "undecided"  # straddles theta_margin = 1/8
    assert decide(_observed(theta_ci=(-0.1, 0.1)), c) == "plateau"
    assert decide(_observed(theta_ci=(math.nan, math.nan)), c) == "undecided"
    assert decide(_observed(concentration_ci=(-0.1, 0.2)), c) == "undecided"  # c may be ≤ 0
    assert decide(_observed(concentration_ci=(-0.3, -0.1)), c) == "no_ode"
    assert decide(_observed(concentration_ci=(-0.3, -0.1), source="ode"), c) == "perfect"  # the ODE cannot see it
    assert decide(_observed(level_ratio_ci=(0.3, 0.5)), c) == "bad"
    assert decide(_observed(level_ratio_ci=(0.2, 0.3)), c) == "undecided"  # straddles high = 1/4
    assert decide(_observed(level_ratio_ci=(0.02, 0.04)), c) == "undecided"  # learnt? the next rule needs it
    not_learnt = dict(level_ratio_ci=(0.05, 0.1))
    assert decide(_observed(**not_learnt), c) == "plateau"  # settled below R(0)/4, level flat in d
    assert decide(_observed(**not_learnt, level_d_slope_ci=(0.2, 0.4)), c) == "bad"
    assert decide(_observed(**not_learnt, level_d_slope_ci=(0.0, 0.2)), c) == "undecided"
    assert decide(_observed(failed=True), c) == "no_ode"


def _trace(d: int, rising: bool, rng: np.random.Generator) -> Trace:
    """A synthetic trace at d: Synthetic's replicas, their risk falling by ½ on τ ∝ d^1.25, or
    rising by ½ when ``rising``."""
    point = Synthetic(theta=0.25).point(rng, d)
    risk = 0.6 - point.risk if rising else point.risk
    nu = crossing_step(point.steps, risk.mean(0), 0.25)
    setup = Setup(replicas=risk.shape[0])
    return Trace(F(0), F(-1, 4), d, point.diag_q.shape[1], "sgd", point.steps, risk, nu, point.diag_q, False, setup)


def test_a_clock_that_changes_mechanism_between_d_values_is_not_fitted():
    """Synthetic traces whose risk rises through ε at d = 16, 36 and falls at d = 81, 169: ϑ is
    NaN with theta_note 'sign_change', and the cell is not called perfect; the same cell with
    the risk falling at every d is fitted (ϑ's interval contains ¼) and has no note."""
    rng = np.random.default_rng(2)
    ds = (16, 36, 81, 169)
    mixed = analyse_cell([_trace(d, d < 50, rng) for d in ds], Criteria(resamples=300))
    assert mixed.crossing_sign == (1, 1, -1, -1)
    assert math.isnan(mixed.theta_observed) and mixed.theta_note == SIGN_CHANGE
    assert all(math.isnan(x) for x in mixed.theta_observed_ci95)
    assert mixed.row()["theta_note"] == "sign_change" and mixed.row()["crossing_sign"] == "+1;+1;-1;-1"
    falling = analyse_cell([_trace(d, False, rng) for d in ds], Criteria(resamples=300))
    assert falling.crossing_sign == (-1,) * 4 and falling.theta_note == ""
    low, high = falling.theta_observed_ci95
    assert low < 0.25 < high and high - low < 0.3
    assert falling.bootstrap.sign_changes == 0.0
    assert falling.theta_tail == falling.theta_observed and falling.theta_tail_d_min == 16
    assert math.isnan(mixed.theta_tail) and mixed.theta_tail_d_min == 0  # two d values of the last mechanism


def test_the_mechanism_of_the_largest_d_is_fitted_over_its_own_d_values():
    """Rising at d = 16, 36, falling at 81, 169, 400: theta_tail is fitted over 81 … 400 (the
    falling crossings, ϑ = ¼ by construction, inside its interval), while ϑ_observed is refused."""
    rng = np.random.default_rng(6)
    cell = analyse_cell([_trace(d, d < 50, rng) for d in (16, 36, 81, 169, 400)], Criteria(resamples=300))
    assert cell.theta_note == SIGN_CHANGE and math.isnan(cell.theta_observed)
    assert cell.theta_tail_d_min == 81
    low, high = cell.theta_tail_ci95
    assert low < cell.theta_tail < high and low < 0.25 < high, (low, cell.theta_tail, high)


def test_the_bootstrap_is_seeded_from_the_cell():
    rng = np.random.default_rng(4)
    traces = [_trace(d, False, rng) for d in (16, 36, 81)]
    once, twice = (analyse_cell(traces, Criteria(resamples=200)) for _ in range(2))
    assert once.row() == twice.row()
    a, b = cell_rng(0, F(0), F(-1, 4), "sgd").random(3), cell_rng(0, F(0), F(-1, 2), "sgd").random(3)
    assert not np.allclose(a, b)


def test_the_threshold_table_shows_which_calls_move_with_each_threshold():
    """Three cells: one perfect whose ϑ interval (0.15, 0.2) sits just above theta_margin = ⅛,
    one clear plateau, one no-ODE; moving theta_margin up by half (3/16) makes the first
    undecided, moving it down (1/16) changes nothing; moving min_concentration from 0 to ¼ makes
    the plateau (c in 0.2–0.4) undecided; the last row decides on point estimates."""
    c = Criteria()
    obs = [
        _observed(theta_ci=(0.15, 0.2), theta=0.17),
        _observed(theta_ci=(-0.05, 0.05), theta=0.0, concentration=0.3, concentration_ci=(0.2, 0.4)),
        _observed(concentration=-0.5, concentration_ci=(-0.6, -0.4)),
    ]
    cells = [
        SimpleNamespace(kappa=F(i), delta=F(0), observables=o, regime_observed=decide(o, c)) for i, o in enumerate(obs)
    ]
    assert [cell.regime_observed for cell in cells] == ["perfect", "plateau", "no_ode"]
    rows = {(r["threshold"], r["moved_to"]): r for r in threshold_sensitivity(cells, c)}
    assert rows["theta_margin", 0.1875]["cells_changed"] == "0,0: perfect→undecided"
    assert rows["theta_margin", 0.0625]["changed"] == 0
    assert rows["min_concentration", 0.25]["cells_changed"] == "1,0: plateau→undecided"
    assert rows["min_concentration", -0.25]["changed"] == 0
    first = threshold_sensitivity(cells, c)[0]
    assert (first["threshold"], first["perfect"], first["plateau"], first["no_ode"]) == ("none", 1, 1, 1)
    assert threshold_sensitivity(cells, c)[-1]["threshold"] == "point_estimates"
    assert len(rows) == 1 + 2 * 5 + 1


def test_undecided_cells_are_drawn_with_their_own_legend_entry(tmp_path):
    rows = [
        {"kappa": 0.0, "delta": d, "regime_theory": "plateau", "regime_observed": obs}
        for d, obs in ((0.0, "plateau"), (0.25, "undecided"))
    ]
    draw_diagram(rows, tmp_path / "d.png", "test")
    assert (tmp_path / "d.png").stat().st_size > 10_000 and "undecided" in LABELS["undecided"]
