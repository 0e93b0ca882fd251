"""``python -m features.bench clients``: the project's RESP client against redis-py + hiredis.

The measurement behind "one Redis client per process": the same Redis work done by the
backend's parts on our ``RedisClient`` and by the cheapest redis-py code we could write
for it (hiredis parser, non-transactional pipelines, ``register_script`` for EVALSHA),
call by call alternating between the two so both see the same machine noise:

- read: one pipeline of HMGETs (every field the matrix needs, the tag bitset, each view's
  ``_ts``) for 1 / 100 / 1,000 merchants, decoded into a ``FeatureBatch`` (redis-py:
  Feast ``Value`` protobufs decoded with ``_codec.decode_numbers`` and friends);
- velocity: one ``EVALSHA`` of ``velocity.lua`` for 1 and 100 merchants;
- idempotency: lookup (``MGET`` of 100 keys, half of them present) and save (``EVALSHA``
  of ``idempotency.lua`` for 100 new ids), i.e. what the redis-py store did before.

Never imported by the runtime: this module (with ``features.bench``) is the only place
under ``features`` that imports redis-py, as the reference it is measured against.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from features import catalog
from features.batch import FeatureBatch, assemble, unique_ids
from features.settings import FeatureSettings
from features.stores import _codec, layout
from features.stores.layout import field_hash, ts_field
from features.stores.redis import RedisBackend
from features.stores.redis import idempotency as idem_mod
from features.stores.redis import velocity as velocity_mod
from features.stores.redis.idempotency import RedisIdempotency
from features.stores.redis.velocity import RedisVelocity
from features.tags import TagCatalog

ENGINES = ("ours", "redis-py")


@dataclass
class ClientRow:
    case: str
    engine: str
    calls: int
    calls_per_s: float
    p50_us: float
    p99_us: float


@dataclass
class _Case:
    name: str
    prepare: Callable[[], Any]  # a fresh input per call, made outside the timed part
    ours: Callable[[Any], object]
    theirs: Callable[[Any], object]


class PyReader:
    """The batched feature read on redis-py: pipelined HMGETs, decoded in as little Python as we could."""

    def __init__(self, client: Any, settings: FeatureSettings, tag_bytes: int) -> None:
        self._client = client
        self._project = settings.project
        self._tag_bytes = tag_bytes
        self._max_age = settings.max_feature_age_s
        col = {name: i for i, name in enumerate(catalog.MATRIX_COLUMNS)}
        self._fields: list[bytes] = []
        cols: list[int] = []
        for v in catalog.ALL_VIEWS:
            for f in v.numeric_names:
                self._fields.append(field_hash(v.name, f))
                cols.append(col[f])
        self._n_num = len(self._fields)
        self._fields.append(field_hash(catalog.TAGS.name, "tags"))
        self._fields += [ts_field(v.name) for v in catalog.ALL_VIEWS]
        self._cols = np.asarray(cols, dtype=np.int32)

    def read(self, merchant_ids: Sequence[str]) -> FeatureBatch:
        uniq, inverse = unique_ids(merchant_ids)
        n, nn = len(uniq), self._n_num
        matrix = np.full((n, len(catalog.MATRIX_COLUMNS)), np.nan, dtype=np.float32)
        tags = np.zeros((n, self._tag_bytes), dtype=np.uint8)
        view_ts = np.zeros((n, len(catalog.ALL_VIEWS)), dtype=np.int64)
        pipe = self._client.pipeline(transaction=False)
        for key in layout.entity_keys(uniq):
            pipe.hmget(layout.redis_key(key, self._project), self._fields)
        replies: list[list[bytes | None]] = pipe.execute()
        numbers = list(chain.from_iterable(r[:nn] for r in replies))
        rows = np.repeat(np.arange(n, dtype=np.int32), nn)
        if _codec.decode_numbers(numbers, rows, np.tile(self._cols, n), matrix) >= 0:
            raise ValueError("a feature value is not a number")
        for i, r in enumerate(replies):
            raw = r[nn]
            payload = _codec.decode_bytes_value(raw) if raw else None
            if payload:
                tags[i, : min(len(payload), self._tag_bytes)] = np.frombuffer(payload[: self._tag_bytes], np.uint8)
            view_ts[i] = [_codec.decode_timestamp(t) for t in r[nn + 1 :]]
        return assemble(matrix, tags, view_ts, inverse, self._max_age)


class PyVelocity:
    """``velocity.lua`` by redis-py's ``Script`` (EVALSHA, SCRIPT LOAD on NOSCRIPT)."""

    def __init__(self, client: Any, settings: FeatureSettings) -> None:
        self._project = settings.project
        self._script = client.register_script(velocity_mod.SCRIPT.body)
        v = catalog.VELOCITY.name
        self._fields = [ts_field(v), field_hash(v, "apps_1h"), field_hash(v, "apps_24h"), field_hash(v, "window_state")]

    def record(self, ids: list[str], k: list[int], now_us: int) -> np.ndarray:
        keys = [layout.redis_key(e, self._project) for e in layout.entity_keys(ids)]
        reply = self._script(keys=keys, args=[*self._fields, now_us, *k])
        return np.asarray(reply, dtype=np.int64).reshape(len(ids), 2)


class PyIdempotency:
    """The redis-py idempotency store this project had (MGET; ``idempotency.lua`` by ``Script``)."""

    def __init__(self, client: Any, settings: FeatureSettings, window_s: int, namespace: str) -> None:
        self._client = client
        self._prefix = f"{settings.project}:idem:{namespace}:".encode()
        self._window = window_s
        self._script = client.register_script(idem_mod.SCRIPT.body)

    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]:
        values = self._client.mget([self._prefix + a.encode() for a in app_ids])
        return {a: v for a, v in zip(app_ids, values, strict=True) if v is not None}

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        lost_at = self._script(keys=[self._prefix + a.encode() for a in app_ids], args=[self._window, *records])
        lost = [app_ids[int(i) - 1] for i in lost_at]
        return self.lookup(lost) if lost else {}


def _same(a: FeatureBatch, b: FeatureBatch) -> bool:
    assert a.view_ts is not None and b.view_ts is not None
    return (np.array_equal(a.matrix, b.matrix, equal_nan=True) and np.array_equal(a.tags, b.tags)
            and np.array_equal(a.view_ts, b.view_ts) and np.array_equal(a.found, b.found))


def _cases(backend: RedisBackend, client: Any, merchants: int, read_sizes: Sequence[int]) -> list[_Case]:
    s = backend.settings
    tag_bytes = TagCatalog.load(s).n_bytes
    ours_reader, py_reader = backend.reader(tag_bytes), PyReader(client, s, tag_bytes)
    ours_vel, py_vel = RedisVelocity(backend.client, s), PyVelocity(client, s)
    space = f"bench{uuid.uuid4().hex[:6]}"
    window = 600
    ours_idem = RedisIdempotency(backend.client, s, window, space)
    py_idem = PyIdempotency(client, s, window, space)
    rng = np.random.default_rng(3)
    ids = [f"M{i:08d}" for i in range(merchants)]

    def pick(n: int) -> list[str]:
        return [ids[i] for i in rng.integers(0, merchants, n)]

    # Both readers must answer the same thing, or the comparison means nothing.
    probe = [*pick(50), "NO-SUCH-MERCHANT"]
    if not _same(ours_reader.read(probe), py_reader.read(probe)):
        raise AssertionError("redis-py reader and ours disagree")
    # Idempotency: 1,000 stored records (~120 bytes, a decision's size); lookups hit half the time.
    stored = [f"app-{uuid.uuid4().hex}" for _ in range(1000)]
    record = bytes(range(120))
    ours_idem.save(stored, [record] * len(stored))
    if py_idem.lookup(stored[:5]) != ours_idem.lookup(stored[:5]):
        raise AssertionError("redis-py idempotency and ours disagree")

    def lookup_ids() -> list[str]:
        hits = [stored[i] for i in rng.integers(0, len(stored), 50)]
        return hits + [f"app-{uuid.uuid4().hex}" for _ in range(50)]

    def new_ids() -> list[str]:
        return [f"app-{uuid.uuid4().hex}" for _ in range(100)]

    def picker(n: int) -> Callable[[], list[str]]:
        return lambda: sorted(set(pick(n)))

    now_us = int(time.time() * 1e6)

    def ours_record(m: list[str]) -> object:
        return ours_vel.record(m, [1] * len(m), now_us)

    def py_record(m: list[str]) -> object:
        return py_vel.record(m, [1] * len(m), now_us)

    def ours_save(a: list[str]) -> object:
        return ours_idem.save(a, [record] * len(a))

    def py_save(a: list[str]) -> object:
        return py_idem.save(a, [record] * len(a))

    cases = [_Case(f"read {n}", picker(n), ours_reader.read, py_reader.read) for n in read_sizes]
    cases += [_Case(f"velocity {n}", picker(n), ours_record, py_record) for n in (1, 100)]
    cases.append(_Case("idem lookup 100", lookup_ids, ours_idem.lookup, py_idem.lookup))
    cases.append(_Case("idem save 100", new_ids, ours_save, py_save))
    return cases


def _path(p: object) -> str | None:
    return None if p is None else str(p)


def compare_clients(
    settings: FeatureSettings, merchants: int, seconds: float, read_sizes: Sequence[int] = (1, 100, 1000)
) -> list[ClientRow]:
    """Time every case on both clients against the world materialized under ``settings``."""
    import redis

    backend = RedisBackend(settings)
    cfg = backend.connection_config  # the same credentials and TLS as ours
    client = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, username=cfg.username, password=cfg.password,
                         ssl=cfg.tls is not None, ssl_ca_certs=_path(settings.redis_tls_ca_file),
                         ssl_certfile=_path(settings.redis_tls_cert_file),
                         ssl_keyfile=_path(settings.redis_tls_key_file),
                         socket_timeout=settings.timeout_s, socket_connect_timeout=settings.timeout_s)
    rows: list[ClientRow] = []
    try:
        for case in _cases(backend, client, merchants, read_sizes):
            times: dict[str, list[float]] = {e: [] for e in ENGINES}
            fns = {"ours": case.ours, "redis-py": case.theirs}
            for _ in range(5):  # warm: connections, scripts loaded, buffers grown
                for e in ENGINES:
                    fns[e](case.prepare())
            deadline = time.perf_counter() + seconds
            turn = 0
            while time.perf_counter() < deadline or len(times["redis-py"]) < 20:
                # Alternate call by call, and which engine goes first, so neither always
                # runs right after the other's (warm caches, a just-woken server).
                order = ENGINES if turn % 2 == 0 else ENGINES[::-1]
                turn += 1
                for e in order:
                    arg = case.prepare()
                    t0 = time.perf_counter()
                    fns[e](arg)
                    times[e].append(time.perf_counter() - t0)
            for e in ENGINES:
                a = np.asarray(times[e]) * 1e6
                rows.append(ClientRow(case.name, e, len(a), 1e6 / float(a.mean()),
                                      float(np.percentile(a, 50)), float(np.percentile(a, 99))))
    finally:
        client.close()
        backend.client.close()
    return rows


def parser_name() -> str:
    """Which reply parser redis-py uses here (hiredis when installed)."""
    from redis.connection import DefaultParser

    return str(DefaultParser.__name__)


def print_rows(rows: list[ClientRow]) -> None:
    print(f"\n{'case':<17}{'client':<10}{'calls':>8}{'calls/s':>10}{'p50 us':>10}{'p99 us':>10}{'ours/redis-py':>15}")
    theirs = {r.case: r for r in rows if r.engine == "redis-py"}
    for r in rows:
        ratio = f"{r.calls_per_s / theirs[r.case].calls_per_s:.2f}x" if r.engine == "ours" else ""
        print(f"{r.case:<17}{r.engine:<10}{r.calls:>8,}{r.calls_per_s:>10,.0f}{r.p50_us:>10,.0f}"
              f"{r.p99_us:>10,.0f}{ratio:>15}")
