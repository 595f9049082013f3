"""Growing d per cell (phasesgd.experiments.diagram.measure.Growth): the next d and its
predicted cost from the measured ν*, the budget, and a cell grown on the overlap chain."""

from __future__ import annotations

import math
from fractions import Fraction as F
from types import SimpleNamespace

import pytest

from phasesgd.experiments.diagram.cells import Criteria
from phasesgd.experiments.diagram.measure import Growth, growth_cost, measure_diagram, step_weight
from phasesgd.experiments.diagram.preset import diagram_setup
from phasesgd.experiments.diagram.probes import Trace, trace_name
from phasesgd.experiments.diagram.setup import RunLength, Setup

SMALL = SimpleNamespace(p0=1, k=1, replicas=1)  # p = 1: a step weighs 1 + 4/10⁵


def _traces(*pairs, kappa=0):
    return [SimpleNamespace(d=d, nu_star=nu, kappa=kappa, setup=SMALL) for d, nu in pairs]


def test_the_next_d_extrapolates_the_last_two_crossings_and_stops_at_the_budget_or_d_max():
    growth = Growth(factor=2, d_max=1000, steps=10_000)
    # ν* ∝ d^1.5 between d = 64 and 100: at 200, ν* = 50·2^1.5 ≈ 141, ν_end = 64 × that
    d, predicted = growth.next_d(_traces((16, 1.0), (64, 50 * 0.64**1.5), (100, 50.0)), 0.0, 64)
    assert d == 200 and predicted == pytest.approx(64 * 50 * 2**1.5, rel=1e-4)
    # κ = 1/2: p = round(200^½) = 14 at d = 200, a step weighs 1 + 225/10⁵
    d, wide = growth.next_d(_traces((64, 50 * 0.64**1.5), (100, 50.0), kappa=F(1, 2)), 0.0, 64)
    assert wide / predicted == pytest.approx((1 + 225e-5) / (1 + 4e-5))
    assert step_weight(32, 300, 1) == pytest.approx(1 + 32 * 301**2 / 1e5)
    assert growth.next_d(_traces((64, 32.0), (100, 50.0)), 10_000 - 64 * 50 * 2 + 1, 64) is None  # over budget
    assert growth.next_d(_traces((250, 1.0), (500, 1.0)), 0.0, 64)[0] == 1000  # d_max itself is measured
    assert growth.next_d(_traces((300, 1.0), (600, 1.0)), 0.0, 64) is None  # 1200: past d_max
    assert growth.next_d(_traces((64, math.nan), (100, 5.0)), 0.0, 64) is None  # a d without ν*
    with pytest.raises(ValueError, match="grow"):
        Growth(factor=1)


def test_a_cell_grows_on_the_chain_until_its_budget_and_sgd_is_refused(tmp_path):
    """(κ, δ) = (0, 0), 4 replicas, ν_end = 8 ν*, d = 16, 36 then ×4 on engine=auto (the chain
    beyond d = 16): ν* ∝ d, so d grows past the grid until the next point's predicted steps would
    take the grown points past the budget, well below d_max; a second run resumes to the same
    d values; growth with engine=sgd is refused."""
    growth = Growth(factor=4, d_max=10**6, steps=20_000)
    criteria = Criteria(run_length=RunLength(end_time=8), resamples=100)
    args = ([F(0)], [F(0)], ([16, 36], growth), tmp_path)
    (cell,) = measure_diagram(*args, Setup(replicas=4), criteria, source="auto")
    assert cell.d_values[:3] == (16, 36, 144) and cell.d_values[-1] < 10**5
    assert set(cell.engines[1:]) == {"chain"}
    traces = [Trace.load(tmp_path / "traces" / trace_name("sgd", F(0), F(0), d)) for d in cell.d_values]
    spent = sum(growth_cost(tr) for tr in traces[2:])
    assert spent <= 2 * growth.steps
    assert growth.next_d(traces, spent, 8) is None  # stopped by the budget, not by d_max
    assert cell.d_values[-1] * 4 <= growth.d_max
    (again,) = measure_diagram(*args, Setup(replicas=4), criteria, source="auto")
    assert again.d_values == cell.d_values
    with pytest.raises(ValueError, match="engine=chain or engine=auto"):
        measure_diagram(*args, Setup(replicas=4), criteria, source="sgd")


def test_the_config_grow_block_reaches_the_grid():
    grid, _ = diagram_setup("phase_diagram", True)
    assert grid.growth is None and grid.plan() == [16, 36, 81, 169]
    grid, _ = diagram_setup("phase_diagram", True, ["diagram.quick.grow.enabled=true"])
    assert grid.growth == Growth(2.1925, 100_000, 150_000)
    assert grid.plan()[1] is grid.growth
