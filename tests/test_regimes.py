"""The regions of the (δ, κ) phase diagram (docs/theory.md §5), in exact arithmetic.

The corrected table: perfect κ + δ > 0, plateau κ + δ = 0, bad κ < −δ < κ + ½, no ODE
−δ ≥ κ + ½. Checked against an independent restatement in terms of the two exponents that
define it (the drift-to-noise ratio γ/p ∝ d^(−(κ+δ)) and the noise increment
(γ/p)²/d ∝ d^(−1−2(κ+δ))), on hand-picked points, the paper's wide-student examples, and
random rational points on and off every boundary line.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasesgd.theory.scaling import (
    Region,
    Scaling,
    classify,
    exact,
    natural_time_exponent,
    no_ode_boundary,
    published_no_ode_boundary,
)

PERFECT, PLATEAU, BAD, NO_ODE = Region.PERFECT, Region.PLATEAU, Region.BAD, Region.NO_ODE
HALF = Fraction(1, 2)


def by_exponents(kappa: Fraction, delta: Fraction) -> Region:
    """The table restated through exponents of d: the noise-to-drift ratio of one step of Q
    is d^(−(κ+δ)) and the noise step itself is d^(−(1 + 2(κ+δ)))."""
    ratio_exponent = -(kappa + delta)  # noise/drift ∝ d^ratio_exponent
    noise_step_exponent = -(1 + 2 * (kappa + delta))  # (γ/p)²/d ∝ d^noise_step_exponent
    if noise_step_exponent >= 0:  # the noise step does not vanish: no continuum limit
        return NO_ODE
    if ratio_exponent < 0:
        return PERFECT
    if ratio_exponent == 0:
        return PLATEAU
    return BAD


def conditions(kappa: Fraction, delta: Fraction) -> dict[Region, bool]:
    """The four conditions of the table, written out literally."""
    return {
        PERFECT: kappa + delta > 0,
        PLATEAU: kappa + delta == 0,
        BAD: kappa < -delta < kappa + HALF,
        NO_ODE: -delta >= kappa + HALF,
    }


kappas = st.fractions(min_value=0, max_value=5, max_denominator=64)
deltas = st.fractions(min_value=-6, max_value=3, max_denominator=64)
gaps = st.fractions(min_value=0, max_value=HALF, max_denominator=1000).filter(lambda x: 0 < x < HALF)


# ----- hand-picked points -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kappa, delta, region",
    [
        # the paper's wide-student examples (Veiga et al. 2022, Fig. 8) and a κ > 1 point that the
        # published (κ+1)/2 boundary would call no-ODE although it is perfect learning
        (2, "-1.6", PERFECT),
        ("5/4", "-3/2", BAD),
        ("3/2", "-3/2", PLATEAU),
        ("1.1", "-2.2", NO_ODE),
        ("3/2", "-1/2", PERFECT),
        # κ = 0: the Saad & Solla line, the bad strip −½ < δ < 0 and its edge
        (0, 0, PLATEAU),
        (0, "-1/4", BAD),
        (0, "-1/2", NO_ODE),
        (0, "1/2", PERFECT),
        # between the corrected line κ + ½ and the published (κ+1)/2: bad learning
        ("1/2", "-3/4", BAD),
        ("1/2", "-7/8", BAD),
        ("1/2", "-1", NO_ODE),
        ("1/4", "-5/8", BAD),
        ("1/4", "-3/4", NO_ODE),
        (1, "-3/2", NO_ODE),
        (1, "-1.4999", BAD),
        (1, "-1", PLATEAU),
        (1, "-0.9999", PERFECT),
    ],
)
def test_corrected_table_on_hand_picked_points(kappa, delta, region):
    for convert in (str, Fraction):
        assert classify(convert(kappa), convert(delta)) is region
    assert by_exponents(exact(kappa), exact(delta)) is region  # the restatement agrees with the list


@pytest.mark.parametrize(
    "kappa, delta, region",
    # binary 0.1 + 0.5 exceeds binary 0.6, so these would be "bad" if floats were read as binary values
    [(0.1, -0.6, NO_ODE), (0.2, -0.7, NO_ODE), (0.1, -0.1, PLATEAU), (0.3, -0.1, PERFECT), (0.1, -0.5999, BAD)],
)
def test_floats_are_read_as_the_decimal_they_print_as(kappa, delta, region):
    assert classify(kappa, delta) is region
    assert classify(np.float64(kappa), np.float64(delta)) is region
    assert classify(np.float32(kappa), np.float32(delta)) is region
    assert classify(Fraction(repr(kappa)), Fraction(repr(delta))) is region


def test_the_binary_values_of_those_floats_would_fall_on_the_other_side():
    assert Fraction(0.1) + HALF > Fraction(0.6) and Fraction(0.2) + HALF > Fraction(0.7)


def test_numbers_of_every_accepted_type_agree():
    assert exact(0.1) == exact("1/10") == exact(Fraction(1, 10)) == exact("0.1") == Fraction(1, 10)
    assert exact(np.int64(3)) == exact(3) == 3


@pytest.mark.parametrize(
    "kappa, delta, name",
    [
        (-0.1, 0, "kappa"),
        ("-1/8", "-1", "kappa"),
        ("wide", 0, "kappa"),
        (0, float("nan"), "delta"),
        (0, "fast", "delta"),
        (float("inf"), 0, "kappa"),
        (0, None, "delta"),
    ],
)
def test_bad_input_is_refused_with_one_line_naming_the_argument(kappa, delta, name):
    for call in (classify, natural_time_exponent, lambda k, d: Scaling(kappa=k, delta=d)):
        with pytest.raises(ValueError, match=rf"^{name} must be") as info:
            call(kappa, delta)
        assert "\n" not in str(info.value)


def test_boundaries_refuse_negative_kappa_and_theta_must_be_finite():
    for line in (no_ode_boundary, published_no_ode_boundary):
        with pytest.raises(ValueError, match="^kappa must be >= 0"):
            line(-1)
    with pytest.raises(ValueError, match="^theta must be"):
        Scaling(theta=float("nan"))


# ----- the two candidate no-ODE lines -----------------------------------------------------------------


def test_candidate_lines_meet_at_kappa_zero_and_differ_beyond():
    assert no_ode_boundary(0) == published_no_ode_boundary(0) == HALF
    assert no_ode_boundary("1/2") == 1 and published_no_ode_boundary("1/2") == Fraction(3, 4)
    assert no_ode_boundary(2) == Fraction(5, 2) and published_no_ode_boundary(2) == Fraction(3, 2)


@given(kappas)
def test_published_line_enters_the_perfect_region_for_kappa_above_one(kappa):
    """For κ > 1, −δ = (κ+1)/2 < κ: the published boundary would declare perfect points no-ODE."""
    on_published = classify(kappa, -published_no_ode_boundary(kappa))
    if kappa > 1:
        assert on_published is PERFECT
    elif kappa == 1:
        assert on_published is PLATEAU
    elif kappa > 0:
        assert on_published is BAD
    else:
        assert on_published is NO_ODE


# ----- property tests on random rational points -----------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(kappas, deltas)
def test_conditions_are_disjoint_cover_everything_and_match_the_restatement(kappa, delta):
    held = [region for region, holds in conditions(kappa, delta).items() if holds]
    assert len(held) == 1  # disjoint and covering, for every κ ≥ 0 and δ
    assert classify(kappa, delta) is held[0] is by_exponents(kappa, delta)
    # the same point given as strings (exact) agrees
    assert classify(str(kappa), str(delta)) is held[0]


@settings(max_examples=200, deadline=None)
@given(kappas, gaps)
def test_points_on_and_beside_each_boundary_line(kappa, gap):
    plateau, edge = -kappa, -no_ode_boundary(kappa)  # the two lines δ = −κ and δ = −(κ + ½)
    assert classify(kappa, plateau) is PLATEAU
    assert classify(kappa, plateau + gap) is PERFECT
    assert classify(kappa, plateau - gap) is BAD  # gap < ½: still above the no-ODE line
    assert classify(kappa, edge) is NO_ODE  # the line itself has no ODE (noise step ∝ d^0)
    assert classify(kappa, edge + gap) is BAD
    assert classify(kappa, edge - gap) is NO_ODE


@settings(max_examples=200, deadline=None)
@given(kappas, gaps)
def test_time_exponent_is_continuous_at_the_plateau_line_and_doubles_in_bad(kappa, gap):
    small = gap / 1000
    assert natural_time_exponent(kappa, -kappa) == 0
    assert natural_time_exponent(kappa, -kappa + small) == small  # ϑ = κ + δ → 0 from the green side
    assert natural_time_exponent(kappa, -kappa - small) == -2 * small  # ϑ = 2(κ + δ) → 0 from the orange side
    delta = -kappa - gap  # a bad-learning point
    assert classify(kappa, delta) is BAD
    assert natural_time_exponent(kappa, delta) == 2 * (kappa + delta)
    # on the no-ODE line the extended clock is one SGD step per unit of t
    assert 1 + natural_time_exponent(kappa, -no_ode_boundary(kappa)) == 0


# ----- Scaling ---------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(kappas, deltas)
def test_scaling_warns_exactly_in_the_no_ode_region(kappa, delta):
    scaling = Scaling(kappa=float(kappa), delta=float(delta))
    expected = classify(float(kappa), float(delta))
    assert scaling.region is expected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaling.warn_if_no_ode()
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if expected is NO_ODE:
        assert len(messages) == 1 and "no-ODE region" in messages[0] and "kappa + 1/2" in messages[0]
    else:
        assert messages == []


def test_scaling_warns_on_the_paper_no_ode_example_and_not_between_the_lines():
    with pytest.warns(UserWarning, match="no-ODE region"):
        Scaling(kappa=1.1, delta=-2.2).warn_if_no_ode()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Scaling(kappa=0.5, delta=-0.75).warn_if_no_ode()  # bad learning: between κ + ½ and (κ+1)/2
        Scaling(kappa=2.0, delta=-1.6).warn_if_no_ode()  # perfect, beyond the published line


def test_scaling_time_exponent_and_steps_per_unit_time():
    assert Scaling(kappa=0.5, delta=-0.75).time_exponent == -0.5  # bad: 2(κ + δ)
    assert Scaling(kappa=0.5, delta=0.25).time_exponent == 0.75  # perfect: κ + δ
    assert Scaling(kappa=0.5, delta=0.25, theta=0.1).time_exponent == 0.1  # explicit ϑ wins
    assert Scaling(kappa=0.25, delta=-0.75).steps_per_unit_time(1000) == pytest.approx(1.0)  # on the line: τ = d^0
