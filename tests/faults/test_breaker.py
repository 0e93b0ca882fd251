"""The circuit breaker on its own: a clock the test moves, real threads for the one-probe rule."""

from __future__ import annotations

import threading

import pytest

from features.errors import FeatureDataError, OnlineStoreUnavailable
from features.settings import FeatureSettings
from features.stores.breaker import Breaker, BreakerOpen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, failures: int = 3, backoff: float = 1.0, cap: float = 4.0) -> Breaker:
    return Breaker("test store", failures=failures, backoff_s=backoff, max_backoff_s=cap, clock=clock)


def _fail(b: Breaker) -> None:
    with pytest.raises(OnlineStoreUnavailable), b.guard():
        raise OnlineStoreUnavailable("connection refused")


def _state(b: Breaker) -> str:
    return b.state  # (a function: mypy would narrow _state(b) across the calls that change it)


def _ok(b: Breaker) -> None:
    with b.guard():
        pass


def test_opens_after_consecutive_failures_and_then_refuses_without_calling() -> None:
    clock = Clock()
    b = _breaker(clock)
    _fail(b)
    _ok(b)  # a success resets the count: failures must be consecutive
    _fail(b)
    _fail(b)
    assert _state(b) == "closed"
    _fail(b)
    assert _state(b) == "open" and not b.available
    called = []
    with pytest.raises(BreakerOpen) as info, b.guard():
        called.append(1)
    assert called == []  # refused before the store was touched
    assert "circuit open after 3 consecutive failures" in str(info.value)
    assert "connection refused" in str(info.value)
    assert b.stats().rejected == 1 and b.stats().opened == 1


def test_one_probe_per_interval_with_backoff_doubling_to_the_cap() -> None:
    clock = Clock()
    b = _breaker(clock, failures=1, backoff=1.0, cap=4.0)
    _fail(b)
    intervals = []
    for _ in range(4):
        intervals.append(b.stats().backoff_s)
        clock.now += b.stats().backoff_s - 0.01
        with pytest.raises(BreakerOpen):
            _ok(b)  # just before the interval ends: still refused
        clock.now += 0.01
        assert _state(b) == "half_open"
        _fail(b)  # the probe fails: twice the interval, capped
    assert intervals == [1.0, 2.0, 4.0, 4.0]
    assert b.stats().probes == 4


def test_a_successful_probe_closes_and_resets_the_backoff() -> None:
    clock = Clock()
    b = _breaker(clock, failures=1, backoff=1.0, cap=8.0)
    _fail(b)
    clock.now += 1.0
    _fail(b)  # probe failed: next interval 2 s
    clock.now += 2.0
    _ok(b)  # probe answered
    assert _state(b) == "closed" and b.stats().backoff_s == 1.0
    _fail(b)
    assert _state(b) == "open" and b.stats().backoff_s == 1.0


def test_only_unavailability_counts_as_a_failure() -> None:
    b = _breaker(Clock(), failures=1)
    with pytest.raises(FeatureDataError), b.guard():
        raise FeatureDataError("the store answered something we refuse")
    assert _state(b) == "closed"  # the store answered: it is reachable


def test_while_a_probe_is_in_flight_every_other_call_is_refused() -> None:
    clock = Clock()
    b = _breaker(clock, failures=1, backoff=1.0)
    _fail(b)
    clock.now += 1.0
    inside = threading.Event()
    release = threading.Event()
    outcome: list[str] = []

    def probe() -> None:
        with b.guard():
            inside.set()
            release.wait(10)
        outcome.append("probe answered")

    t = threading.Thread(target=probe)
    t.start()
    assert inside.wait(10)
    refused = 0
    for _ in range(5):
        try:
            _ok(b)
        except BreakerOpen:
            refused += 1
    assert refused == 5 and _state(b) == "half_open"
    release.set()
    t.join(10)
    assert outcome == ["probe answered"] and _state(b) == "closed"


def test_settings_carry_the_breaker_and_refuse_a_cap_below_the_start() -> None:
    s = FeatureSettings(breaker_failures=5, breaker_backoff_s=0.25, breaker_max_backoff_s=2.0)
    b = Breaker.from_settings("x", s)
    assert b.stats().backoff_s == 0.25
    with pytest.raises(ValueError, match="breaker_max_backoff_s"):
        FeatureSettings(breaker_backoff_s=5.0, breaker_max_backoff_s=1.0)
    with pytest.raises(ValueError, match="breaker_failures"):
        FeatureSettings(breaker_failures=0)
