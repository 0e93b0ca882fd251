"""The bulk materializer writes exactly the layout ``feast materialize`` writes."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from features import catalog
from features.catalog import ALL_VIEWS
from features.feast_repo import apply, open_store
from features.materialize import materialize
from features.settings import FeatureSettings
from features.stores import _codec, open_backend
from features.stores.layout import ts_field
from tests.conftest import World, requires_redis

START = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
END = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)


def _dump(path: Path, project: str) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    out = {}
    for v in ALL_VIEWS:
        out[v.name] = conn.execute(
            "SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts "
            f'FROM "{project}_{v.name}" ORDER BY entity_key, feature_name'
        ).fetchall()
    conn.close()
    return out


def _schema(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    return rows


def _copy(world: World, root: Path) -> Path:
    for sub in ("raw", "offline"):
        shutil.copytree(world.data_dir / sub, root / sub)
    return root


def test_bulk_sqlite_layout_equals_feast_materialize(world: World, tmp_path: Path) -> None:
    s_feast = FeatureSettings(data_dir=_copy(world, tmp_path / "feast"))
    s_bulk = FeatureSettings(data_dir=_copy(world, tmp_path / "bulk"))
    apply(s_feast)
    apply(s_bulk)
    open_store(s_feast).materialize(START, END)
    report = materialize(s_bulk, START, END)
    assert report.entities > 0
    a, b = _dump(s_feast.sqlite_path, "creditauth"), _dump(s_bulk.sqlite_path, "creditauth")
    for view in a:
        assert len(a[view]) == len(b[view]) > 0, view
        assert a[view] == b[view], view
    # Same tables and indexes too (the bulk load rebuilds the entity_key index at the end).
    assert _schema(s_feast.sqlite_path) == _schema(s_bulk.sqlite_path)
    # The registry records the interval like feast materialize does.
    fv = open_store(s_bulk).get_feature_view("merchant_flows")
    assert fv.materialization_intervals and fv.materialization_intervals[-1][1] == END


@pytest.fixture
def redis_projects(world: World, tmp_path: Path) -> Iterator[tuple[FeatureSettings, FeatureSettings]]:
    import redis

    tag = uuid.uuid4().hex[:8]
    pair = tuple(
        FeatureSettings(data_dir=_copy(world, tmp_path / name), online_store="redis", project=f"camat{name}{tag}")
        for name in ("feast", "bulk")
    )
    yield pair  # type: ignore[misc]
    client = redis.Redis()
    for s in pair:
        keys = list(client.scan_iter(match=b"*" + s.project.encode(), count=5000))
        for i in range(0, len(keys), 5000):
            client.unlink(*keys[i : i + 5000])


def _hashes(project: str) -> dict[bytes, dict[bytes, bytes]]:
    import redis

    client = redis.Redis()
    suffix = project.encode()
    keys = sorted(client.scan_iter(match=b"*" + suffix, count=5000))
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k)
    return {k[: -len(suffix)]: h for k, h in zip(keys, pipe.execute(), strict=True)}


@requires_redis
def test_bulk_redis_layout_equals_feast_materialize(
    redis_projects: tuple[FeatureSettings, FeatureSettings],
) -> None:
    s_feast, s_bulk = redis_projects
    apply(s_feast)
    apply(s_bulk)
    open_store(s_feast).materialize(START, END)
    materialize(s_bulk, START, END)
    a, b = _hashes(s_feast.project), _hashes(s_bulk.project)
    assert len(a) == len(b) > 0
    assert a == b  # every key, every field, every byte


@requires_redis
def test_redis_dedup_keeps_newer_rows_like_feast(
    redis_projects: tuple[FeatureSettings, FeatureSettings],
) -> None:
    """A re-materialization must not roll back velocity a push wrote after the snapshot."""
    _, s = redis_projects
    apply(s)
    materialize(s, START, END)
    counts = open_backend(s).velocity().record(["M00000005"])
    assert counts.apps_1h.tolist() == [1]
    import redis

    key = _codec.entity_keys(catalog.JOIN_KEY, ["M00000005"])[0] + s.project.encode()
    live = redis.Redis().hget(key, ts_field(catalog.VELOCITY.name))
    materialize(s, START, END, views=(catalog.VELOCITY,))  # Feast semantics: older rows skipped
    assert redis.Redis().hget(key, ts_field(catalog.VELOCITY.name)) == live
    materialize(s, START, END, views=(catalog.VELOCITY,), dedup=False)  # skip_dedup: overwritten
    assert redis.Redis().hget(key, ts_field(catalog.VELOCITY.name)) != live


def test_offline_tables_with_duplicates_take_the_latest_row(world: World, tmp_path: Path) -> None:
    s = FeatureSettings(data_dir=_copy(world, tmp_path / "dups"))
    path = s.offline_dir / "merchant_profile.parquet"
    table = pl.read_parquet(path)
    newer = table.head(5).with_columns(
        pl.col("event_timestamp") + dt.timedelta(hours=1), pl.lit(999_999, pl.Int64).alias("customer_base")
    )
    pl.concat([newer, table]).write_parquet(path)  # newer rows first: order must not matter
    apply(s)
    materialize(s, START, END, views=(catalog.PROFILE,))
    conn = sqlite3.connect(s.sqlite_path)
    texts = conn.execute(
        'SELECT value_text FROM "creditauth_merchant_profile" WHERE feature_name = ? AND entity_key IN (?, ?)',
        ["customer_base", *_codec.entity_keys(catalog.JOIN_KEY, ["M00000000", "M00000010"])],
    ).fetchall()
    assert sorted(t for (t,) in texts) == sorted(["999999", str(table["customer_base"][10])])
