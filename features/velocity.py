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

Round trips. Redis: one ``EVALSHA`` per batch runs the update for every merchant of the
batch inside Redis (atomic, so concurrent replicas never lose an increment) and returns
the new counts. SQLite: one ``BEGIN IMMEDIATE`` transaction per batch (read states, write
rows), which serializes replicas the same way.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features import catalog
from features.errors import FeatureDataError, OnlineStoreUnavailable
from features.online import _codec, _resp, _resp_build
from features.online.redis_reader import field_hash, ts_field
from features.settings import FeatureSettings

VIEW = catalog.VELOCITY
STATE_VERSION = 1
MINUTE_US = 60_000_000
QUARTER_US = 900_000_000
MINUTES = 60
QUARTERS = 96
_STATE = struct.Struct("<BdII" + "I" * (MINUTES + QUARTERS))
STATE_BYTES = _STATE.size  # 641

_LUA = r"""
-- features/velocity.py: slide and bump the velocity windows of each key, atomically.
-- ARGV: field _ts, field apps_1h, field apps_24h, field window_state, now_us, count per key.
-- Only the counters that change are rewritten (string splices), so a record costs a few
-- microseconds of Redis time however wide the state is.
local F_TS, F_1H, F_24H, F_ST = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(ARGV[5])
local M_US, Q_US, NM, NQ = 60000000, 900000000, 60, 96
local HEAD = '<BdI4I4'
local HB = 17                      -- header bytes
local MOFF, QOFF = HB + 1, HB + 1 + 4 * NM
local SIZE = HB + 4 * (NM + NQ)

local function varint(v)
  local out = {}
  repeat
    local b = v % 128
    v = (v - b) / 128
    if v > 0 then b = b + 128 end
    out[#out + 1] = string.char(b)
  until v == 0
  return table.concat(out)
end

local function read_varint(s, i)
  local v, mul = 0, 1
  while true do
    local b = string.byte(s, i)
    if b == nil then return nil, i end
    i = i + 1
    v = v + (b % 128) * mul
    if b < 128 then return v, i end
    mul = mul * 128
  end
end

-- Zero ring slots for buckets (from, to], adding up what was cleared.
local function clear(body, base, slots, from, to)
  local removed = 0
  if to - from >= slots then
    for j = 0, slots - 1 do removed = removed + struct.unpack('<I4', body, base + 4 * j) end
    return body:sub(1, base - 1) .. string.rep('\0', 4 * slots) .. body:sub(base + 4 * slots), removed
  end
  for b = from + 1, to do
    local off = base + 4 * (b % slots)
    local v = struct.unpack('<I4', body, off)
    if v ~= 0 then
      removed = removed + v
      body = body:sub(1, off - 1) .. '\0\0\0\0' .. body:sub(off + 4)
    end
  end
  return body, removed
end

local function bump(body, off, k)
  local v = struct.unpack('<I4', body, off)
  return body:sub(1, off - 1) .. struct.pack('<I4', v + k) .. body:sub(off + 4)
end

local out = {}
for i, key in ipairs(KEYS) do
  local k = tonumber(ARGV[5 + i])
  local body = nil
  local last, s1, s24 = now, 0, 0
  local raw = redis.call('HGET', key, F_ST)
  if raw and string.byte(raw, 1) == 10 then
    local len, p = read_varint(raw, 2)
    if len == SIZE and #raw - p + 1 == SIZE then
      local version
      version, last, s1, s24 = struct.unpack(HEAD, raw, p)
      if version == 1 then body = raw:sub(p) else last, s1, s24 = now, 0, 0 end
    end
  end
  if body == nil then body = struct.pack(HEAD, 1, now, 0, 0) .. string.rep('\0', 4 * (NM + NQ)) end
  local m_now, q_now = math.floor(now / M_US), math.floor(now / Q_US)
  local m_last, q_last = math.floor(last / M_US), math.floor(last / Q_US)
  local removed
  if m_now > m_last then
    body, removed = clear(body, MOFF, NM, m_last, m_now)
    s1 = s1 - removed
  end
  if q_now > q_last then
    body, removed = clear(body, QOFF, NQ, q_last, q_now)
    s24 = s24 - removed
  end
  if m_now > math.max(m_now, m_last) - NM then
    body = bump(body, MOFF + 4 * (m_now % NM), k)
    s1 = s1 + k
  end
  if q_now > math.max(q_now, q_last) - NQ then
    body = bump(body, QOFF + 4 * (q_now % NQ), k)
    s24 = s24 + k
  end
  if now > last then last = now end
  body = struct.pack(HEAD, 1, last, s1, s24) .. body:sub(HB + 1)
  local sec = math.floor(last / 1000000)
  local nanos = (last - sec * 1000000) * 1000
  local ts = ''
  if sec ~= 0 then ts = '\8' .. varint(sec) end
  if nanos ~= 0 then ts = ts .. '\16' .. varint(nanos) end
  redis.call('HSET', key, F_TS, ts, F_1H, '\32' .. varint(s1), F_24H, '\32' .. varint(s24),
             F_ST, '\10' .. varint(#body) .. body)
  out[2 * i - 1] = s1
  out[2 * i] = s24
end
return out
"""
_LUA_SHA = hashlib.sha1(_LUA.encode()).hexdigest().encode()


@dataclass(frozen=True)
class VelocityCounts:
    """Counts after a ``record`` call, one row per requested id (repeats share a row's value)."""

    apps_1h: npt.NDArray[np.int64]
    apps_24h: npt.NDArray[np.int64]
    event_us: int  # the time recorded, Unix microseconds


# --- the window arithmetic: the reference (one merchant); the Lua above and record_states below
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


class VelocityRecorder:
    """Records authorizations into Feast's velocity view; call ``record`` once per batch."""

    def __init__(self, settings: FeatureSettings) -> None:
        self._settings = settings
        self._impl: _RedisVelocity | _SqliteVelocity = (
            _RedisVelocity(settings) if settings.online_store == "redis" else _SqliteVelocity(settings)
        )

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


class _RedisVelocity:
    def __init__(self, settings: FeatureSettings) -> None:
        from features.online.resp import RespConnection

        self._conn = RespConnection(settings)
        self._suffix = settings.project.encode()
        names = dict(zip(VIEW.field_names, range(3), strict=True))
        assert list(names) == ["apps_1h", "apps_24h", "window_state"], "velocity view changed"
        self._fields = [
            ts_field(VIEW.name),
            field_hash(VIEW.name, "apps_1h"),
            field_hash(VIEW.name, "apps_24h"),
            field_hash(VIEW.name, "window_state"),
        ]

    def record(self, ids: list[str], k: list[int], now_us: int) -> npt.NDArray[np.int64]:
        keys = [key + self._suffix for key in _codec.entity_keys(catalog.JOIN_KEY, ids)]
        args = [b"EVALSHA", _LUA_SHA, str(len(keys)).encode(), *keys, *self._fields,
                str(now_us).encode(), *(str(c).encode() for c in k)]
        evalsha = _resp_build.encode_command(args)
        reply = self._call(evalsha)
        if isinstance(reply, _resp.RespServerError) and str(reply).startswith("NOSCRIPT"):
            # First use on this server (or its script cache was flushed): load, then retry.
            load = _resp_build.encode_command([b"SCRIPT", b"LOAD", _LUA.encode()])
            collector = _resp.ReplyCollector(2)
            self._conn.call(load + evalsha, collector)
            reply = collector.replies[1]
        if isinstance(reply, _resp.RespServerError):
            raise FeatureDataError(f"velocity update refused by Redis: {reply}")
        if not isinstance(reply, list) or len(reply) != 2 * len(ids):
            raise FeatureDataError(f"velocity update returned {reply!r:.200}")
        return np.asarray(reply, dtype=np.int64).reshape(len(ids), 2)

    def _call(self, payload: bytearray) -> object:
        collector = _resp.ReplyCollector(1)
        self._conn.call(payload, collector)
        return collector.replies[0]

    def close(self) -> None:
        self._conn.close()


class _SqliteVelocity:
    def __init__(self, settings: FeatureSettings) -> None:
        path = settings.sqlite_path
        if not path.exists():
            raise OnlineStoreUnavailable(f"SQLite online store {path} does not exist")
        try:
            self._conn = sqlite3.connect(
                path, timeout=settings.timeout_s, isolation_level=None, check_same_thread=False
            )
            # Every decision commits a velocity update. In the default rollback-journal
            # mode each commit costs two fsyncs (~1 ms here, most of a single-request
            # batch's time); WAL with synchronous=NORMAL makes a commit an append and
            # syncs at checkpoints. On a crash the last commits may be lost: counters
            # of the embedded dev store, like Redis without persistence in production.
            # The mode is a property of the file: Feast's own connections and our
            # readers follow it, and readers no longer wait for writers.
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"cannot open {path}: {exc}") from exc
        self._table = f"{settings.project}_{VIEW.name}"
        self._lock = threading.Lock()

    def record(self, ids: list[str], k: list[int], now_us: int) -> npt.NDArray[np.int64]:
        keys = _codec.entity_keys(catalog.JOIN_KEY, ids)
        out = np.zeros((len(ids), 2), dtype=np.int64)
        upsert = (
            f'INSERT INTO "{self._table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )
        try:
            with self._lock:
                # IMMEDIATE takes the write lock before reading: concurrent replicas serialize
                # on it, so no increment is lost between our read and our write.
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    stored: dict[bytes, bytes] = {}
                    for start in range(0, len(keys), 900):
                        part = keys[start : start + 900]
                        stored.update(self._conn.execute(
                            f'SELECT entity_key, value FROM "{self._table}" WHERE feature_name = '
                            f"'window_state' AND entity_key IN ({','.join('?' * len(part))})",
                            part,
                        ).fetchall())
                    # The window arithmetic for the whole batch in numpy (record_states);
                    # what is left per merchant is building its three row tuples.
                    st = record_states([stored.get(key) for key in keys], now_us, k)
                    out[:, 0] = st["apps_1h"]
                    out[:, 1] = st["apps_24h"]
                    enc = _codec.encode_int64(out.ravel(), np.ones(2 * len(keys), np.uint8))
                    raw = st.tobytes()
                    states = _codec.encode_bytes([raw[i : i + STATE_BYTES] for i in range(0, len(raw), STATE_BYTES)])
                    # Feast stores whole seconds (int(datetime.timestamp())).
                    ts = (st["last_us"] // 1_000_000).astype(np.int64).tolist()
                    created = now_us // 1_000_000
                    c = out.tolist()
                    rows: list[tuple[object, ...]] = []
                    for i, key in enumerate(keys):
                        rows += [
                            (key, "apps_1h", enc[2 * i], str(c[i][0]), ts[i], created),
                            (key, "apps_24h", enc[2 * i + 1], str(c[i][1]), ts[i], created),
                            (key, "window_state", states[i], None, ts[i], created),
                        ]
                    self._conn.executemany(upsert, rows)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"SQLite velocity write failed: {exc}") from exc
        return out

    def close(self) -> None:
        self._conn.close()
