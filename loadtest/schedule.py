"""Rate schedules: when each request of an open-loop phase is *meant* to be sent.

A schedule is a list of segments whose rate changes linearly (constant, ramp,
step and spike are all built from them). ``count_at(t)`` is the number of
requests due by ``t``; the k-th request is due at ``time_at(k)``, its inverse.
Generating send times this way, rather than "sleep 1/rate after each send",
keeps the intended times exact even when the sender falls behind: latency is
then measured from them, so a stalled server cannot hide its queue.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """``duration`` seconds whose rate goes linearly from ``start_rate`` to ``end_rate``."""

    duration: float
    start_rate: float
    end_rate: float

    @property
    def count(self) -> float:
        return 0.5 * (self.start_rate + self.end_rate) * self.duration

    def count_at(self, t: float) -> float:
        t = min(max(t, 0.0), self.duration)
        slope = (self.end_rate - self.start_rate) / self.duration if self.duration else 0.0
        return self.start_rate * t + 0.5 * slope * t * t

    def time_at(self, c: float) -> float:
        """The ``t`` with ``count_at(t) == c`` (``0 <= c <= count``)."""
        a = 0.5 * (self.end_rate - self.start_rate) / self.duration if self.duration else 0.0
        b = self.start_rate
        # 2c / (b + sqrt(b^2 + 4ac)) is the quadratic's root in a form that stays
        # exact when a -> 0 (constant rate) and needs no case for a ramp down.
        disc = math.sqrt(max(b * b + 4.0 * a * c, 0.0))
        den = b + disc
        return min(2.0 * c / den, self.duration) if den > 0 else 0.0


@dataclass(frozen=True)
class Schedule:
    segments: tuple[Segment, ...]

    @classmethod
    def constant(cls, rate: float, duration: float) -> Schedule:
        return cls((Segment(duration, rate, rate),))

    @classmethod
    def ramp(cls, start: float, end: float, duration: float) -> Schedule:
        return cls((Segment(duration, start, end),))

    @classmethod
    def steps(cls, rates: Sequence[float], each: float) -> Schedule:
        return cls(tuple(Segment(each, r, r) for r in rates))

    @classmethod
    def spike(cls, base: float, peak: float, at: float, length: float, duration: float) -> Schedule:
        parts = [Segment(at, base, base), Segment(length, peak, peak)]
        if duration - at - length > 0:
            parts.append(Segment(duration - at - length, base, base))
        return cls(tuple(p for p in parts if p.duration > 0))

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    @property
    def total(self) -> float:
        """Requests the schedule asks for (fractional: the last one may not be due)."""
        return sum(s.count for s in self.segments)

    @property
    def mean_rate(self) -> float:
        return self.total / self.duration if self.duration else 0.0

    @property
    def peak_rate(self) -> float:
        return max((max(s.start_rate, s.end_rate) for s in self.segments), default=0.0)

    def scaled(self, factor: float) -> Schedule:
        """The same shape at ``factor`` times the rate (decisions/s -> batch RPCs/s)."""
        return Schedule(tuple(Segment(s.duration, s.start_rate * factor, s.end_rate * factor) for s in self.segments))

    def rate_at(self, t: float) -> float:
        for s in self.segments:
            if t < s.duration:
                return s.start_rate + (s.end_rate - s.start_rate) * max(t, 0.0) / s.duration
            t -= s.duration
        return 0.0

    def count_at(self, t: float) -> float:
        done = 0.0
        for s in self.segments:
            if t <= s.duration:
                return done + s.count_at(t)
            done += s.count
            t -= s.duration
        return done

    def time_at(self, c: float) -> float:
        t0 = 0.0
        for s in self.segments:
            if c <= s.count:
                return t0 + s.time_at(c)
            c -= s.count
            t0 += s.duration
        return t0

    def intended_times(
        self, *, worker: int = 0, workers: int = 1, poisson_seed: int | None = None
    ) -> Iterator[float]:
        """This worker's share of the send times, in seconds from the phase start, ascending.

        Uniform arrivals: the k-th request overall is due at ``time_at(k)`` and
        worker ``w`` of ``n`` takes every n-th one, so n processes interleave into
        exactly the schedule. Poisson arrivals (``poisson_seed`` set): each worker
        draws exponential gaps in count space at rate 1/n; the superposition is a
        Poisson process whose rate follows the schedule (time rescaling).
        """
        total = self.total
        if poisson_seed is None:
            k = float(worker)
            while k < total:
                yield self.time_at(k)
                k += workers
            return
        rng = np.random.default_rng([poisson_seed, worker])
        c = 0.0
        while True:
            gaps = rng.exponential(float(workers), 4096)
            for g in gaps:
                c += float(g)
                if c >= total:
                    return
                yield self.time_at(c)
