"""Histograms merged across processes, never averaged; outcomes classified by intent."""

from __future__ import annotations

import multiprocessing as mp

import grpc
import numpy as np

from creditauth.v1 import authorization_pb2 as pb
from loadtest.mix import Kind
from loadtest.tally import (
    BAD_ACCEPTED,
    ERROR,
    OK,
    REJECTED,
    Interval,
    decode_histogram,
    encode_histogram,
    item_outcome,
    new_histogram,
    record_us,
    status_outcome,
)


def _slice_from_process(args: tuple[int, float, int]) -> dict[str, object]:
    """What a generator process does: record into its own Interval, ship it encoded."""
    seed, scale, n = args
    rng = np.random.default_rng(seed)
    iv = Interval(offered=n, sent=n)
    for v in rng.exponential(scale, n):
        record_us(iv.latency, float(v))
        iv.count((OK, "APPROVE"))
    return iv.to_wire()


def test_histograms_merged_across_processes_equal_one_histogram_of_everything() -> None:
    # Two processes see very different latencies (a fast and a slow replica, say).
    jobs = [(1, 0.002, 20_000), (2, 0.200, 1_000)]
    with mp.get_context("spawn").Pool(2) as pool:
        wires = pool.map(_slice_from_process, jobs)
    merged = Interval()
    for w in wires:
        merged.add(Interval.from_wire(w))
    # The same values recorded into one histogram in this process.
    single = new_histogram()
    for seed, scale, n in jobs:
        for v in np.random.default_rng(seed).exponential(scale, n):
            record_us(single, float(v))
    assert merged.latency.get_total_count() == 21_000 == merged.ok
    for q in (50.0, 90.0, 99.0, 99.9, 100.0):
        assert merged.latency.get_value_at_percentile(q) == single.get_value_at_percentile(q)
    # Averaging the processes' p99s would be badly wrong: the true p99 is in the slow tail.
    parts = [Interval.from_wire(w).latency.get_value_at_percentile(99.0) for w in wires]
    true_p99 = merged.latency.get_value_at_percentile(99.0)
    assert abs(sum(parts) / 2 - true_p99) > 0.2 * true_p99


def test_interval_wire_round_trip_keeps_every_field() -> None:
    iv = Interval(offered=10, sent=9, rpcs=3, capped=2, degraded=1)
    iv.count((OK, "APPROVE"), 5)
    iv.count((REJECTED, ""), 2)
    iv.count((ERROR, "UNAVAILABLE"), 2)
    record_us(iv.latency, 0.010, 9)
    record_us(iv.service, 0.004, 9)
    record_us(iv.lag, 0.001)
    back = Interval.from_wire(iv.to_wire())
    assert (back.offered, back.sent, back.rpcs, back.ok, back.rejected, back.capped, back.degraded) == (
        10, 9, 3, 5, 2, 2, 1)
    assert back.errors == {"UNAVAILABLE": 2} and back.outcomes == {"APPROVE": 5}
    assert back.latency.get_total_count() == 9 and back.lag.get_total_count() == 1
    assert back.answered == 7 and back.error_count == 2


def test_encoded_histogram_text_round_trip() -> None:
    h = new_histogram()
    for v in range(1, 5000, 7):
        h.record_value(v * 11)
    back = decode_histogram(encode_histogram(h))
    assert back.get_total_count() == h.get_total_count()
    assert back.get_value_at_percentile(99.9) == h.get_value_at_percentile(99.9)


def test_values_beyond_the_range_are_clamped_not_dropped() -> None:
    h = new_histogram()
    record_us(h, 10_000.0)  # longer than the histogram's hour
    record_us(h, -1.0)
    assert h.get_total_count() == 2


def test_bad_requests_rejected_are_correct_answers_not_errors() -> None:
    assert status_outcome(grpc.StatusCode.INVALID_ARGUMENT, Kind.BAD) == (REJECTED, "")
    assert status_outcome(grpc.StatusCode.INVALID_ARGUMENT, Kind.GOOD) == (ERROR, "INVALID_ARGUMENT")
    assert status_outcome(grpc.StatusCode.UNAVAILABLE, Kind.BAD) == (ERROR, "UNAVAILABLE")
    item_error = pb.AuthorizeResponse(error=pb.ItemError(code=3, field="term_months"))
    assert item_outcome(item_error, Kind.BAD) == (REJECTED, "")
    assert item_outcome(item_error, Kind.UNKNOWN) == (ERROR, "INVALID_ARGUMENT")
    decided = pb.AuthorizeResponse(decision=pb.DECISION_DECLINE)
    assert item_outcome(decided, Kind.GOOD) == (OK, "DECLINE")
    assert item_outcome(decided, Kind.BAD) == (ERROR, BAD_ACCEPTED)
    timeout = pb.AuthorizeResponse(error=pb.ItemError(code=4))
    assert item_outcome(timeout, Kind.GOOD) == (ERROR, "DEADLINE_EXCEEDED")


def test_fast_quantiles_agree_with_hdrh_exactly() -> None:
    from loadtest.hist import Quantiles

    h = new_histogram()
    for v in np.random.default_rng(4).lognormal(-5.0, 1.5, 5000):
        record_us(h, float(v))
    q = Quantiles(h)
    for p in (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0):
        assert q.value_at(p) == h.get_value_at_percentile(p)
    assert q.mean() == h.get_mean_value()
    assert abs(q.stddev() - h.get_stddev()) < 1e-6 * h.get_stddev()
    levels = q.levels()
    assert levels[0][1] == 0.0 and levels[-1] == (h.get_value_at_percentile(100.0), 1.0, 5000)
    assert [lv for _, lv, _ in levels] == sorted(lv for _, lv, _ in levels)
