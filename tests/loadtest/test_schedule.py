"""Rate schedules: counts, intended send times, and how processes share them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtest.schedule import Schedule, Segment


def test_constant_rate_sends_exactly_rate_times_duration_evenly_spaced() -> None:
    times = list(Schedule.constant(100.0, 2.0).intended_times())
    assert len(times) == 200
    assert times[0] == 0.0
    assert np.allclose(np.diff(times), 0.01)
    assert times[-1] < 2.0


def test_ramp_follows_the_integral_of_a_linear_rate() -> None:
    s = Schedule.ramp(0.0, 1000.0, 10.0)
    assert s.total == pytest.approx(5000.0)
    times = np.array(list(s.intended_times()))
    assert len(times) == 5000
    # N(t) = 50 t^2  =>  t_k = sqrt(k / 50)
    k = np.arange(5000)
    assert np.allclose(times, np.sqrt(k / 50.0), atol=1e-9)
    # More requests in the last second than the first: the rate really rises.
    assert np.sum(times >= 9.0) > 10 * np.sum(times < 1.0)


def test_ramp_down_is_also_exact() -> None:
    s = Schedule.ramp(1000.0, 200.0, 4.0)
    for c in (0.0, 1.0, 100.0, 1500.0, s.total - 1e-6):
        assert s.count_at(s.time_at(c)) == pytest.approx(c, abs=1e-6)


def test_steps_hold_each_rate_for_its_step() -> None:
    s = Schedule.steps([100.0, 300.0, 200.0], each=2.0)
    assert s.duration == 6.0
    times = np.array(list(s.intended_times()))
    per_step = [int(np.sum((times >= a) & (times < a + 2.0))) for a in (0.0, 2.0, 4.0)]
    assert per_step == [200, 600, 400]


def test_spike_rate_jumps_for_its_length_only() -> None:
    s = Schedule.spike(base=100.0, peak=1000.0, at=2.0, length=1.0, duration=5.0)
    assert s.rate_at(1.9) == 100.0
    assert s.rate_at(2.5) == 1000.0
    assert s.rate_at(3.5) == 100.0
    times = np.array(list(s.intended_times()))
    assert int(np.sum((times >= 2.0) & (times < 3.0))) == 1000
    assert len(times) == 100 * 4 + 1000


def test_workers_interleave_into_exactly_the_single_process_schedule() -> None:
    s = Schedule.ramp(50.0, 500.0, 3.0)
    one = list(s.intended_times())
    merged = sorted(t for w in range(3) for t in s.intended_times(worker=w, workers=3))
    assert merged == pytest.approx(one)


def test_poisson_arrivals_keep_the_mean_rate_and_are_not_evenly_spaced() -> None:
    s = Schedule.constant(2000.0, 5.0)
    times = [t for w in range(2) for t in s.intended_times(worker=w, workers=2, poisson_seed=7)]
    assert len(times) == pytest.approx(10_000, rel=0.05)
    gaps = np.diff(sorted(times))
    # Exponential gaps have a coefficient of variation of 1; uniform ones 0.
    assert 0.8 < gaps.std() / gaps.mean() < 1.2


def test_scaled_schedule_for_batches() -> None:
    s = Schedule.constant(5000.0, 2.0).scaled(1 / 100)
    assert len(list(s.intended_times())) == 100


def test_time_at_inverts_count_at_everywhere() -> None:
    s = Schedule((Segment(1.0, 10.0, 500.0), Segment(2.0, 500.0, 500.0), Segment(1.5, 500.0, 0.0)))
    for t in np.linspace(0.0, s.duration, 97):
        assert s.time_at(s.count_at(float(t))) == pytest.approx(float(t), abs=1e-6)
    assert math.isclose(s.mean_rate, s.total / s.duration)
    assert s.peak_rate == 500.0
