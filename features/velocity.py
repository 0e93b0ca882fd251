"""Real-time application velocity: ``apps_1h`` and ``apps_24h`` per merchant, written on
every authorization batch into Feast's ``merchant_velocity`` view.

Feast stays the system of record: the values land in exactly the layout
``FeatureStore.push("merchant_velocity_push", df)`` writes (same Redis hash fields and
Value encodings, same SQLite rows), so the next read — ours or the Feast SDK's —
sees them. A test compares the bytes with what ``push`` writes for the same values.

Windows. A sliding count needs the application times, which a feature value cannot
hold for a busy merchant, so the view carries its own compact state, ``window_state``
(one Bytes field, 641 bytes):

    u8 version (1) | f64 last_us | u32 apps_1h | u32 apps_24h
    | 60 x u32 minute counters | 96 x u32 quarter-hour counters

(little-endian; minute ``m`` lives in slot ``m % 60``, quarter-hour ``q`` in ``q % 96``).
Recording ``k`` applications at ``now`` zeroes the slots the window slid past, adds ``k``
to the current minute and quarter-hour, and keeps both sums:

- ``apps_1h``  = applications in the current minute and the 59 before it: every
  application of the last 59-60 minutes, never one older than an hour;
- ``apps_24h`` = the same over 96 quarter-hours: the last 23 h 45 min to 24 h.

So a count can only miss applications in the oldest, partly elapsed bucket (at most
the first minute of the hour, the first quarter-hour of the day), never overcount.
Counts are as of the merchant's latest application (the row's event time): they include
the batch just recorded, and the state keeps sliding correctly on the next record.
Clocks that step back (another replica slightly behind) still count, in the bucket of
their own time if the ring still holds it; the row's time never goes backwards.

Round trips. Redis (``features.stores.redis.velocity``, script ``velocity.lua``): one
``EVALSHA`` per batch runs the update for every merchant of the batch inside Redis
(atomic, so concurrent replicas never lose an increment) and returns the new counts.
SQLite (``features.stores.sqlite.velocity``): one ``BEGIN IMMEDIATE`` transaction per
batch (read states, write rows), which serializes replicas the same way.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from features import catalog
from features.stores import _codec

VIEW = catalog.VELOCITY
STATE_VERSION = 1
MINUTE_US = 60_000_000
QUARTER_US = 900_000_000
MINUTES = 60
QUARTERS = 96
_STATE = struct.Struct("<BdII" + "I" * (MINUTES + QUARTERS))
STATE_BYTES = _STATE.size  # 641



@dataclass(frozen=True)
class VelocityCounts:
    """Counts after a ``record`` call, one row per requested id (repeats share a row's value)."""

    apps_1h: npt.NDArray[np.int64]
    apps_24h: npt.NDArray[np.int64]
    event_us: int  # the time recorded, Unix microseconds


# --- the window arithmetic: the reference (one merchant); the Redis script and record_states below
# (the SQLite path, a batch at once) are tested byte for byte against it ----------------------


@dataclass
class WindowState:
    last_us: float
    minutes: list[int]
    quarters: list[int]

    @classmethod
    def fresh(cls, now_us: int) -> WindowState:
        return cls(float(now_us), [0] * MINUTES, [0] * QUARTERS)

    @classmethod
    def from_value(cls, value: bytes | None, now_us: int) -> WindowState:
        """From a serialized ``window_state`` Value; a fresh state if absent, null or foreign."""
        try:
            payload = _codec.decode_bytes_value(value) if value else None
        except ValueError:
            payload = None
        if payload is None or len(payload) != STATE_BYTES:
            return cls.fresh(now_us)
        fields = _STATE.unpack(payload)
        if fields[0] != STATE_VERSION:
            return cls.fresh(now_us)
        return cls(fields[1], list(fields[4 : 4 + MINUTES]), list(fields[4 + MINUTES :]))

    def record(self, now_us: int, k: int) -> None:
        m_now, q_now = now_us // MINUTE_US, now_us // QUARTER_US
        m_last, q_last = int(self.last_us // MINUTE_US), int(self.last_us // QUARTER_US)
        for m in range(m_last + 1, min(m_now, m_last + MINUTES) + 1):
            self.minutes[m % MINUTES] = 0
        for q in range(q_last + 1, min(q_now, q_last + QUARTERS) + 1):
            self.quarters[q % QUARTERS] = 0
        if m_now > max(m_now, m_last) - MINUTES:
            self.minutes[m_now % MINUTES] += k
        if q_now > max(q_now, q_last) - QUARTERS:
            self.quarters[q_now % QUARTERS] += k
        self.last_us = max(self.last_us, float(now_us))

    @property
    def apps_1h(self) -> int:
        return sum(self.minutes)

    @property
    def apps_24h(self) -> int:
        return sum(self.quarters)

    def payload(self) -> bytes:
        return _STATE.pack(
            STATE_VERSION, self.last_us, self.apps_1h, self.apps_24h, *self.minutes, *self.quarters
        )

    def value(self) -> bytes:
        """The serialized ``window_state`` Value (a Feast ``bytes_val``)."""
        return _codec.encode_bytes([self.payload()])[0]


# --- vectorised window update (SQLite path) ---------------------------------------------

_STATE_DTYPE = np.dtype(
    [("version", "u1"), ("last_us", "<f8"), ("apps_1h", "<u4"), ("apps_24h", "<u4"),
     ("minutes", "<u4", (MINUTES,)), ("quarters", "<u4", (QUARTERS,))]
)
assert _STATE_DTYPE.itemsize == STATE_BYTES


def _slide(ring: npt.NDArray[np.uint32], last: npt.NDArray[np.int64], now: int, k: npt.NDArray[np.int64]) -> None:
    """``WindowState.record`` on many rings at once, in place: rows are states, columns slots.

    Slot ``s`` holds bucket ``b_s = now - ((now - s) % slots)`` (the newest bucket <= now that
    maps to it); the window slid past it iff ``b_s > last``, so zero those, then add ``k`` to
    the current bucket unless the clock stepped back further than the ring holds.
    """
    slots = ring.shape[1]
    newest = now - ((now - np.arange(slots)) % slots)
    ring[newest[None, :] > last[:, None]] = 0
    bump = now > np.maximum(now, last) - slots
    ring[bump, now % slots] += k[bump].astype(np.uint32)


def record_states(values: Sequence[bytes | None], now_us: int, k: Sequence[int]) -> npt.NDArray[np.void]:
    """Decode serialized ``window_state`` values (None, null or foreign: fresh), record ``k[i]``
    applications at ``now_us`` in each, and return the new states (structured, with sums)."""
    n = len(values)
    st = np.zeros(n, dtype=_STATE_DTYPE)
    st["last_us"] = float(now_us)
    for i, value in enumerate(values):
        try:
            payload = _codec.decode_bytes_value(value) if value else None
        except ValueError:
            payload = None
        if payload is not None and len(payload) == STATE_BYTES and payload[0] == STATE_VERSION:
            st[i] = np.frombuffer(payload, dtype=_STATE_DTYPE)[0]
    st["version"] = STATE_VERSION
    last = st["last_us"]
    kk = np.asarray(k, dtype=np.int64)
    minutes, quarters = st["minutes"], st["quarters"]  # views: _slide updates st in place
    _slide(minutes, (last // MINUTE_US).astype(np.int64), now_us // MINUTE_US, kk)
    _slide(quarters, (last // QUARTER_US).astype(np.int64), now_us // QUARTER_US, kk)
    st["last_us"] = np.maximum(last, float(now_us))
    st["apps_1h"] = minutes.sum(axis=1, dtype=np.uint64)
    st["apps_24h"] = quarters.sum(axis=1, dtype=np.uint64)
    return st


# --- the recorder ------------------------------------------------------------------------


class VelocityState(Protocol):
    """A store's half of the recorder: apply ``k[i]`` applications to ``ids[i]`` at ``now_us``
    atomically (concurrent replicas never lose an increment) and return the new
    ``(apps_1h, apps_24h)`` per id, in one round trip."""

    def record(self, ids: list[str], k: list[int], now_us: int) -> npt.NDArray[np.int64]: ...

    def close(self) -> None: ...


class VelocityRecorder:
    """Records authorizations into Feast's velocity view; call ``record`` once per batch.

    Built by the store backend (``features.stores.open_backend(...).velocity()``), which
    supplies the store's ``VelocityState``.
    """

    def __init__(self, state: VelocityState) -> None:
        self._impl = state

    def record(self, merchant_ids: Sequence[str], now_s: float | None = None) -> VelocityCounts:
        """Count one application per id at ``now_s`` (default: the wall clock) and return
        every row's ``apps_1h``/``apps_24h`` including this batch. One round trip.

        Raises ``OnlineStoreUnavailable`` if the store is unreachable or slower than
        ``FeatureSettings.timeout_s``.
        """
        now_us = round((time.time() if now_s is None else now_s) * 1_000_000)
        n = len(merchant_ids)
        if n == 0:
            return VelocityCounts(np.zeros(0, np.int64), np.zeros(0, np.int64), now_us)
        counts = Counter(merchant_ids)
        uniq = list(counts)
        got = self._impl.record(uniq, [counts[m] for m in uniq], now_us)
        if len(uniq) == n:
            return VelocityCounts(got[:, 0].copy(), got[:, 1].copy(), now_us)
        row = {m: i for i, m in enumerate(uniq)}
        idx = np.fromiter((row[m] for m in merchant_ids), np.intp, n)
        return VelocityCounts(got[idx, 0], got[idx, 1], now_us)

    def close(self) -> None:
        self._impl.close()
