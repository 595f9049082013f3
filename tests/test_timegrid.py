"""Measurement times and the chunks of SGD steps between them."""

from __future__ import annotations

import numpy as np

from phasesgd.sgd.timegrid import chunk_boundaries, log_times, measurement_steps, next_chunk


def test_log_times_span_the_run_with_the_asked_density():
    t = log_times(100.0, t_min=1e-2, per_decade=10)
    assert t[0] == 0.0 and t[1] == 1e-2 and t[-1] == 100.0
    assert len(t) == 1 + 4 * 10 + 1  # 0, then four decades of 10 points and the end point
    np.testing.assert_allclose(np.diff(np.log10(t[1:])), 0.1)


def test_chunks_hit_every_measurement_and_never_exceed_the_chunk_size():
    stops = measurement_steps(t_max=50.0, steps_per_unit=300, t_min=1e-2, per_decade=7)
    bounds = np.array(chunk_boundaries(stops, 64))
    assert bounds[0] == 0 and bounds[-1] == stops[-1]
    assert set(stops[stops > 0]) <= set(bounds)
    assert np.diff(bounds).max() <= 64 and np.diff(bounds).min() >= 1


def test_a_resumed_run_cuts_the_same_chunks():
    """From any step on the way, the boundaries are the tail of the full list (a resumed run
    draws its data in the same chunks), and nothing is left past the last measurement."""
    stops = measurement_steps(t_max=20.0, steps_per_unit=250, t_min=1e-2, per_decade=5)
    full = chunk_boundaries(stops, 100)
    for start in full:
        assert chunk_boundaries(stops, 100, start=start) == full[full.index(start) :]
    assert next_chunk(stops, 100, int(stops[-1])) == 0 and chunk_boundaries(stops, 100, start=int(stops[-1]) + 5) == [
        int(stops[-1]) + 5
    ]
