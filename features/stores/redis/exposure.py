"""Exposure counters in Redis: one ``EVALSHA`` of ``exposure.lua`` per batch.

Each cap is two keys under ``<project>:exposure:<cap>:``: a sorted set of live entries (one
per batch and scope value, scored by expiry) and a hash of the live totals per value. The
script drops what expired, allocates every item of the batch in order (``features.exposure.
allocate``) and records the grants, atomically: replicas and front ends never overdraw a
cap between them. The batch travels packed (amounts, starts and counters as three binary
arguments, the values once each), so building it costs numpy calls, not a loop per item.
Calls go over the backend's shared ``RedisClient`` (its deadline, its circuit breaker), so a
dead Redis is ``OnlineStoreUnavailable`` like a feature read.

On a Redis Cluster the keys are ``{<project>:exposure}:<cap>:z`` / ``:t``: one hash tag for
every cap, because a batch is allocated against all its caps in one atomic script, which
Redis runs only on keys of one slot (the price: the caps live on one master).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from features.errors import FeatureDataError
from features.exposure import CapLimit, Claims, Grants, entries
from features.settings import FeatureSettings
from features.stores.redis.client import Script
from features.stores.redis.cluster import AnyClient, ClusterClient

SCRIPT = Script.load(__package__, "exposure.lua")


def _num(v: int | None) -> bytes:
    return b"-1" if v is None else str(int(v)).encode()


def _member(entry: npt.NDArray[np.int64], token: bytes, value: str) -> bytes:
    """A batch's entry in a cap's sorted set: ``<amount>:<count>:<token>:<value>``."""
    return f"{int(entry[0])}:{int(entry[1])}:".encode() + token + b":" + value.encode()


class RedisExposure:
    def __init__(self, client: AnyClient, settings: FeatureSettings) -> None:
        self._client = client
        tagged = isinstance(client, ClusterClient)
        self._prefix = (f"{{{settings.project}:exposure}}:" if tagged else f"{settings.project}:exposure:").encode()

    def _keys(self, caps: Sequence[CapLimit]) -> list[bytes]:
        keys: list[bytes] = []
        for cap in caps:
            base = self._prefix + cap.name.encode()
            keys += [base + b":z", base + b":t"]
        return keys

    def reserve(self, caps: Sequence[CapLimit], claims: Claims, now: float) -> Grants:
        if len(claims) == 0:
            return Grants(np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, np.intp))
        args = [b"reserve", str(round(now * 1000)).encode(), str(claims.min_amount).encode(), claims.token,
                str(len(caps)).encode()]
        for cap in caps:
            args += [_num(cap.max_amount), _num(cap.max_count), str(max(1, round(cap.window_s * 1000))).encode(),
                     b"1" if cap.refer else b"0"]
        capno = np.array([c + 1 for c, _ in claims.counters], dtype="<u4")
        args += [str(len(claims.counters)).encode(), capno.tobytes(), *(v.encode() for _, v in claims.counters),
                 claims.amount.astype("<f8").tobytes(), claims.starts.astype("<u4").tobytes(),
                 claims.counter.astype("<u4").tobytes()]
        reply = self._client.eval_script(SCRIPT, self._keys(caps), args, context="exposure reserve")
        return _grants(reply, len(claims))

    def release(self, caps: Sequence[CapLimit], claims: Claims, grants: Grants, items: Sequence[int]) -> None:
        held, left = entries(claims, grants), entries(claims, grants, items)
        changed = np.flatnonzero((held != left).any(axis=1)).tolist()
        if not changed:
            return
        args: list[bytes] = [b"release"]
        for p in changed:
            c, value = claims.counters[p]
            gone = held[p] - left[p]
            args += [str(c + 1).encode(), value.encode(), _member(held[p], claims.token, value),
                     _member(left[p], claims.token, value) if left[p, 1] else b"",
                     str(int(gone[0])).encode(), str(int(gone[1])).encode()]
        self._client.eval_script(SCRIPT, self._keys(caps), args, context="exposure release")

    def usage(self, cap: CapLimit, value: str, now: float) -> tuple[int, int]:
        z = self._keys([cap])[0]
        reply = self._client.command(b"ZRANGEBYSCORE", z, f"({round(now * 1000)}".encode(), b"+inf",
                                     context="exposure usage")
        if not isinstance(reply, list):
            raise FeatureDataError(f"exposure usage returned {reply!r:.200}")
        parts = [m.split(b":", 3) for m in reply]
        mine = [p for p in parts if p[3] == value.encode()]
        return sum(int(p[0]) for p in mine), sum(int(p[1]) for p in mine)

    def close(self) -> None:
        self._client.close()


def _grants(reply: object, n: int) -> Grants:
    """The script's packed reply (grants as f64 per item; reached pairs as u32) as ``Grants``."""
    if not (isinstance(reply, list) and len(reply) == 2 and all(isinstance(x, bytes) for x in reply)):
        raise FeatureDataError(f"exposure reserve returned {reply!r:.200}")
    grants, hits = reply
    if len(grants) != 8 * n or len(hits) % 8:
        raise FeatureDataError(f"exposure reserve returned {len(grants)} grant bytes for {n} items")
    pairs = np.frombuffer(hits, dtype="<u4").reshape(-1, 2).astype(np.intp)
    return Grants(np.frombuffer(grants, dtype="<f8").astype(np.int64), pairs[:, 0].copy(), pairs[:, 1].copy())
