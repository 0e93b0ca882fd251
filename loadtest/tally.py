"""What happened in one slice of a run: counts and latency histograms that add up.

Everything here is additive (counters and HdrHistograms), so slices from many
generator processes and many seconds combine exactly: histograms are merged
(encode -> decode -> add), never percentiles averaged.

Units: ``offered``/``sent``/``ok``/``rejected``/errors count *decisions* (a
batch RPC of 100 is 100); ``rpcs`` counts calls. Latencies are recorded per
decision, in microseconds:

* ``latency``: completion minus the *intended* send time (the schedule's), so
  time a request spent waiting behind a stalled server or a saturated
  generator is counted (no coordinated omission).
* ``service``: completion minus the actual send time (what a closed-loop tool
  would report; shown for contrast).
* ``lag``: actual minus intended send time, per RPC: how far behind schedule
  the generator itself was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from hdrh.histogram import HdrHistogram

from creditauth.v1 import authorization_pb2 as pb
from loadtest.hist import Quantiles
from loadtest.mix import Kind

# One hour in microseconds: an unsent request at the end of a long soak still fits.
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3

OK, REJECTED, ERROR = "ok", "rejected", "error"
Outcome = tuple[str, str]  # (OK | REJECTED | ERROR, decision name or error key)

# Error keys that are not gRPC status codes.
BAD_ACCEPTED = "BAD_ACCEPTED"  # an invalid request was decided instead of rejected
NOT_SENT = "NOT_SENT"  # due before the hard stop, never sent (generator or in-flight cap)
ABANDONED = "ABANDONED"  # in flight at the hard stop
MISSING = "MISSING"  # a batch or stream answered fewer items than it was sent

_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
_DECISIONS = {v: k.removeprefix("DECISION_") for k, v in pb.Decision.items()}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_us(h: HdrHistogram, seconds: float, count: int = 1) -> None:
    # hdrh silently drops out-of-range values; clamp so nothing goes missing.
    h.record_value(min(max(int(seconds * 1e6), 1), HIGHEST_US), count)


def status_outcome(code: grpc.StatusCode, kind: Kind) -> Outcome:
    """A whole call failed with ``code``."""
    if code == grpc.StatusCode.INVALID_ARGUMENT and kind == Kind.BAD:
        return REJECTED, ""
    return ERROR, code.name


def item_outcome(resp: pb.AuthorizeResponse, kind: Kind) -> Outcome:
    """One answer (a unary response, or an item of a batch or stream)."""
    if resp.HasField("error"):
        return status_outcome(_status(resp.error.code), kind)
    if kind == Kind.BAD:
        return ERROR, BAD_ACCEPTED
    return OK, _DECISIONS.get(resp.decision) or str(resp.decision)


def _status(code: int) -> grpc.StatusCode:
    name = _CODE_NAMES.get(code)
    return grpc.StatusCode[name] if name else grpc.StatusCode.UNKNOWN


_COUNTERS = ("offered", "sent", "rpcs", "ok", "rejected", "degraded", "capped")


@dataclass
class Interval:
    offered: int = 0
    sent: int = 0
    rpcs: int = 0
    ok: int = 0
    rejected: int = 0
    degraded: int = 0
    capped: int = 0  # RPCs that had to wait for a slot under max_in_flight
    errors: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    latency: HdrHistogram = field(default_factory=new_histogram)
    service: HdrHistogram = field(default_factory=new_histogram)
    lag: HdrHistogram = field(default_factory=new_histogram)

    @property
    def answered(self) -> int:
        """Decisions answered correctly: decided, or (for bad requests) rejected."""
        return self.ok + self.rejected

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def count(self, outcome: Outcome, n: int = 1) -> None:
        what, key = outcome
        if what == OK:
            self.ok += n
            self.outcomes[key] = self.outcomes.get(key, 0) + n
        elif what == REJECTED:
            self.rejected += n
        else:
            self.errors[key] = self.errors.get(key, 0) + n

    def add(self, other: Interval) -> None:
        self.offered += other.offered
        self.sent += other.sent
        self.rpcs += other.rpcs
        self.ok += other.ok
        self.rejected += other.rejected
        self.degraded += other.degraded
        self.capped += other.capped
        for mine, theirs in ((self.errors, other.errors), (self.outcomes, other.outcomes)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for name in ("latency", "service", "lag"):
            h: HdrHistogram = getattr(other, name)
            if h.get_total_count():
                getattr(self, name).add(h)

    def to_wire(self) -> dict[str, Any]:
        """A picklable, compact form for the trip from a generator process to the parent."""
        d: dict[str, Any] = {
            k: getattr(self, k) for k in _COUNTERS
        }
        d["errors"], d["outcomes"] = dict(self.errors), dict(self.outcomes)
        for name in ("latency", "service", "lag"):
            h: HdrHistogram = getattr(self, name)
            d[name] = h.encode() if h.get_total_count() else None
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Interval:
        out = cls(**{k: d[k] for k in _COUNTERS})
        out.errors, out.outcomes = dict(d["errors"]), dict(d["outcomes"])
        for name in ("latency", "service", "lag"):
            if d[name] is not None:
                getattr(out, name).decode_and_add(d[name])
        return out


def encode_histogram(h: HdrHistogram) -> str:
    """Base64 text of the compressed HdrHistogram (the V2 "histoblob"), for JSON."""
    raw = h.encode()
    return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)


def decode_histogram(text: str) -> HdrHistogram:
    h = new_histogram()
    h.decode_and_add(text.encode("ascii"))
    return h


def percentiles_ms(h: HdrHistogram) -> dict[str, float]:
    if not h.get_total_count():
        return {}
    q = Quantiles(h)
    out = {
        k: round(q.value_at(p) / 1000.0, 3)
        for k, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("p99.99", 99.99))
    }
    out["max"] = round(h.get_max_value() / 1000.0, 3)
    out["mean"] = round(q.mean() / 1000.0, 3)
    return out

