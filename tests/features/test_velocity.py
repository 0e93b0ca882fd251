"""Velocity recording: Feast push layout, visibility to both readers, window arithmetic."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import MATRIX_COLUMNS, FeatureSettings, VelocityRecorder, catalog
from features.feast_repo import apply, open_store
from features.materialize import materialize
from features.stores import _codec, open_backend
from features.velocity import MINUTE_US, QUARTER_US, STATE_BYTES, WindowState, record_states
from tests.conftest import World, redis_available

NOW = 1_790_000_000.25  # a fixed wall clock for the tests
_STORES = [
    "sqlite",
    pytest.param("redis", marks=pytest.mark.skipif(not redis_available(), reason="no Redis")),
]


@pytest.fixture(params=_STORES)
def vstore(request: pytest.FixtureRequest, world: World, tmp_path: Path) -> Iterator[FeatureSettings]:
    """A private copy of the world with only the velocity view materialized."""
    root = tmp_path / "v"
    shutil.copytree(world.data_dir / "offline", root / "offline")
    kw: dict[str, object] = {}
    if request.param == "redis":
        kw = {"online_store": "redis", "project": f"cavel{uuid.uuid4().hex[:10]}"}
    s = FeatureSettings(data_dir=root, max_feature_age_s=1e9, **kw)  # type: ignore[arg-type]
    apply(s)
    ts = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    materialize(s, ts - dt.timedelta(days=1), ts + dt.timedelta(seconds=1), views=(catalog.VELOCITY,))
    yield s
    if s.online_store == "redis":
        import redis

        client = redis.Redis()
        for k in client.scan_iter(match=b"*" + s.project.encode(), count=5000):
            client.unlink(k)


def _sdk_counts(s: FeatureSettings, ids: list[str]) -> list[tuple[object, object]]:
    got = open_store(s).get_online_features(
        features=["merchant_velocity:apps_1h", "merchant_velocity:apps_24h"],
        entity_rows=[{catalog.JOIN_KEY: m} for m in ids],
    ).to_dict()
    return list(zip(got["apps_1h"], got["apps_24h"], strict=True))


def test_record_is_visible_to_our_reader_and_the_feast_sdk(vstore: FeatureSettings) -> None:
    rec = open_backend(vstore).velocity()
    ids = ["M00000001", "M00000002", "M00000001", "NEW-MERCHANT"]
    first = rec.record(ids, NOW)
    assert first.apps_1h.tolist() == [2, 1, 2, 1] and first.apps_24h.tolist() == [2, 1, 2, 1]
    rec.record(["M00000001"], NOW + 1800)  # +30 min: both windows
    last = rec.record(["M00000001"], NOW + 3700)  # +61 min: the first two left the hour
    assert last.apps_1h.tolist() == [2] and last.apps_24h.tolist() == [4]
    read = open_backend(vstore).reader().read(["M00000001", "M00000002", "NEW-MERCHANT", "M00000003"])
    cols = [MATRIX_COLUMNS.index("apps_1h"), MATRIX_COLUMNS.index("apps_24h")]
    assert read.matrix[:, cols].tolist() == [[2, 4], [1, 1], [1, 1], [0, 0]]
    assert _sdk_counts(vstore, ["M00000001", "M00000002", "NEW-MERCHANT", "M00000003"]) == [
        (2, 4), (1, 1), (1, 1), (0, 0),
    ]
    # The row's time is the latest application's: fresh for the staleness check.
    assert read.view_ts is not None and read.view_ts[0, -1] == int(NOW + 3700)
    rec.close()


def _redis_fields(s: FeatureSettings, merchant: str) -> dict[bytes, bytes]:
    import redis

    key = _codec.entity_keys(catalog.JOIN_KEY, [merchant])[0] + s.project.encode()
    return redis.Redis().hgetall(key)


def _sqlite_rows(s: FeatureSettings, merchant: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(s.sqlite_path)
    key = _codec.entity_keys(catalog.JOIN_KEY, [merchant])[0]
    rows = conn.execute(
        "SELECT feature_name, value, value_text, vector_value, event_ts, created_ts "
        f'FROM "{s.project}_merchant_velocity" WHERE entity_key = ? ORDER BY feature_name',
        [key],
    ).fetchall()
    conn.close()
    return rows


def _forget(s: FeatureSettings, merchant: str) -> None:
    key = _codec.entity_keys(catalog.JOIN_KEY, [merchant])[0]
    if s.online_store == "redis":
        import redis

        redis.Redis().delete(key + s.project.encode())
    else:
        with sqlite3.connect(s.sqlite_path) as conn:
            conn.execute(f'DELETE FROM "{s.project}_merchant_velocity" WHERE entity_key = ?', [key])


def test_record_writes_exactly_what_feast_push_writes(vstore: FeatureSettings) -> None:
    m = "BRAND-NEW"  # no materialized row: the store holds only what each writer wrote
    rec = open_backend(vstore).velocity()
    rec.record([m, m, m], NOW - 600)
    counts = rec.record([m], NOW)
    read = _redis_fields if vstore.online_store == "redis" else _sqlite_rows
    ours = read(vstore, m)
    state = _codec.decode_bytes_value(_state_value(vstore, m))
    assert state is not None and len(state) == STATE_BYTES
    _forget(vstore, m)
    assert not read(vstore, m)
    ts = pd.Timestamp(round(NOW * 1_000_000), unit="us", tz="UTC")
    df = pd.DataFrame({
        catalog.JOIN_KEY: [m],
        "event_timestamp": [ts],
        "created_timestamp": [ts],
        "apps_1h": [int(counts.apps_1h[0])],
        "apps_24h": [int(counts.apps_24h[0])],
        "window_state": [state],
    })
    open_store(vstore).push("merchant_velocity_push", df)
    assert read(vstore, m) == ours
    rec.close()


def _state_value(s: FeatureSettings, merchant: str) -> bytes:
    if s.online_store == "redis":
        from features.stores.layout import field_hash

        return _redis_fields(s, merchant)[field_hash(catalog.VELOCITY.name, "window_state")]
    return next(r[1] for r in _sqlite_rows(s, merchant) if r[0] == "window_state")  # type: ignore[return-value]


def test_concurrent_recorders_lose_no_increment(vstore: FeatureSettings) -> None:
    recorders = [open_backend(vstore).velocity() for _ in range(2)]
    errors: list[BaseException] = []

    def work(rec: VelocityRecorder, offset: float) -> None:
        try:
            for i in range(60):
                rec.record(["M00000042"], NOW + offset + i * 0.01)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r, k * 0.001)) for k, r in enumerate(recorders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _sdk_counts(vstore, ["M00000042"]) == [(120, 120)]


# --- window arithmetic ----------------------------------------------------------------


def _exact(history: list[tuple[int, int]]) -> tuple[int, int]:
    """The documented semantics by brute force: buckets of the latest time seen."""
    ref = max(t for t, _ in history)
    m_ref, q_ref = ref // MINUTE_US, ref // QUARTER_US
    h1 = sum(k for t, k in history if t // MINUTE_US > m_ref - 60)
    h24 = sum(k for t, k in history if t // QUARTER_US > q_ref - 96)
    return h1, h24


_steps = st.lists(
    st.tuples(
        st.one_of(
            st.integers(0, 90_000_000),  # within a minute or so
            st.integers(0, 4 * 3_600_000_000),  # hours
            st.integers(-120_000_000, 0),  # a replica clock slightly behind
            st.just(3 * 86_400_000_000),  # a long silence
        ),
        st.integers(1, 5),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_window_state_counts_match_the_definition(steps: list[tuple[int, int]]) -> None:
    t = round(NOW * 1e6)
    state = None
    history: list[tuple[int, int]] = []
    for dt_us, k in steps:
        t += dt_us
        state = WindowState.from_value(None if state is None else state.value(), t)
        state.record(t, k)
        history.append((t, k))
        assert (state.apps_1h, state.apps_24h) == _exact(history)
        assert state.last_us == max(h for h, _ in history)


@pytest.mark.skipif(not redis_available(), reason="no Redis")
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
def test_redis_script_equals_python_reference(steps: list[tuple[int, int]]) -> None:
    """The Lua that runs in Redis and the Python that runs for SQLite write the same bytes."""
    import redis

    project = f"cavlua{uuid.uuid4().hex[:8]}"
    s = FeatureSettings(online_store="redis", project=project)
    rec = open_backend(s).velocity()
    t = round(NOW * 1e6)
    ref: WindowState | None = None
    try:
        for dt_us, k in steps:
            t += dt_us
            now_s = t / 1e6
            got = rec.record(["M1"] * k, now_s)
            now_us = round(now_s * 1_000_000)  # the recorder's own rounding
            ref = ref or WindowState.fresh(now_us)
            ref.record(now_us, k)
            assert (int(got.apps_1h[0]), int(got.apps_24h[0])) == (ref.apps_1h, ref.apps_24h)
        assert ref is not None and _state_value(s, "M1") == ref.value()  # the same bytes
    finally:
        rec.close()
        for key in redis.Redis().scan_iter(match=b"*" + project.encode()):
            redis.Redis().unlink(key)


def test_foreign_or_null_state_starts_fresh() -> None:
    assert WindowState.from_value(b"", 5).apps_1h == 0
    assert WindowState.from_value(b"\x0a\x03abc", 5).minutes == [0] * 60
    good = WindowState.fresh(10)
    good.record(10, 3)
    assert WindowState.from_value(good.value(), 10).apps_24h == 3
    assert np.frombuffer(good.payload()[9:17], "<u4").tolist() == [3, 3]  # the stored sums


@settings(max_examples=200, deadline=None)
@given(st.lists(_steps, min_size=1, max_size=6), st.integers(-3 * QUARTER_US, 3 * QUARTER_US))
def test_vectorised_record_equals_the_reference(histories: list[list[tuple[int, int]]], shift: int) -> None:
    """record_states (the SQLite path: one numpy pass per batch) writes byte for byte what
    WindowState writes for each merchant, from any earlier history, clocks stepping back included."""
    t0 = round(NOW * 1e6)
    refs: list[WindowState | None] = []
    for steps in histories:
        ref: WindowState | None = None
        t = t0
        for dt_us, k in steps:
            t += dt_us
            ref = ref or WindowState.fresh(t)
            ref.record(t, k)
        refs.append(ref)
    refs.append(None)  # a merchant never seen
    now = t0 + sum(d for d, _ in histories[0]) + shift
    ks = [1 + i % 3 for i in range(len(refs))]
    values = [None if r is None else r.value() for r in refs]
    got = record_states(values, now, ks)
    for i, r in enumerate(refs):
        want = WindowState.from_value(values[i], now) if r is not None else WindowState.fresh(now)
        want.record(now, ks[i])
        assert got[i].tobytes() == want.payload()
        assert (int(got["apps_1h"][i]), int(got["apps_24h"][i])) == (want.apps_1h, want.apps_24h)
