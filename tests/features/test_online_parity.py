"""Our batched readers return exactly what Feast's own SDK returns, on both stores."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from features import MATRIX_COLUMNS
from features.batch import VIEW_NAMES
from features.catalog import ALL_VIEWS, JOIN_KEY, TAGS
from features.feast_repo import open_store
from features.stores import open_backend
from features.stores.sqlite import _sqlite
from features.stores.sqlite.reader import PySqliteReader, SqliteReader
from features.tags import TagCatalog
from tests.conftest import World, feature_settings

REFS = [f"{v.name}:{f}" for v in ALL_VIEWS for f in v.field_names]


def _sdk(world: World, ids: list[str]) -> dict[str, list[object]]:
    store = open_store(feature_settings(world))
    return store.get_online_features(features=REFS, entity_rows=[{JOIN_KEY: m} for m in ids]).to_dict()


def _special_ids(world: World) -> dict[str, list[str]]:
    """Merchants that exercise every way a value can be missing."""
    off = world.data_dir / "offline"
    flows = pl.read_parquet(off / "merchant_flows.parquet")
    bureau = set(pl.read_parquet(off / "merchant_bureau.parquet")["merchant_id"].to_list())
    with_null = flows.filter(pl.any_horizontal(pl.all().exclude(JOIN_KEY).is_null()))[JOIN_KEY]
    no_bureau = [m for m in flows[JOIN_KEY].to_list() if m not in bureau]
    assert len(with_null) and no_bureau, "the test world should have null values and absent views"
    return {"null_value": with_null.head(3).to_list(), "no_bureau": no_bureau[:3]}


def _check_against_sdk(world: World, ids: list[str], reader: object | None = None) -> None:
    want = _sdk(world, ids)
    reader = reader or open_backend(feature_settings(world)).reader()
    got = reader.read(ids)  # type: ignore[attr-defined]
    assert got.matrix.shape == (len(ids), len(MATRIX_COLUMNS))
    assert got.matrix.dtype == np.float32 and got.matrix.flags.c_contiguous
    for j, col in enumerate(MATRIX_COLUMNS):
        expected = np.array([np.nan if w is None else np.float32(w) for w in want[col]], dtype=np.float32)
        # Exact: same bits, NaN exactly where the SDK has None.
        assert np.array_equal(got.matrix[:, j], expected, equal_nan=True), col
    for i, w in enumerate(want["tags"]):
        if w is None:
            assert not got.tags[i].any()
        else:
            assert got.tags[i].tobytes() == w
    # Rows are found iff the SDK has any batch-view value for them.
    batch_cols = [f for v in ALL_VIEWS[:-1] for f in v.field_names]
    known = [any(want[c][i] is not None for c in batch_cols) for i in range(len(ids))]
    assert got.found.tolist() == known
    assert (got.event_ts[got.found] > 0).all()
    reader.close()  # type: ignore[attr-defined]


def _ids(world: World) -> list[str]:
    special = _special_ids(world)
    # Known merchants, unknown ones, a repeat, merchants without a bureau record and
    # merchants with null values, and one that only has velocity (recorded, unknown).
    return [
        "M00000000", "M00000017", "M00002999", "NOT-A-MERCHANT", "M00000017", "M00001234",
        *special["no_bureau"], *special["null_value"], "VELOCITY-ONLY", "",
    ]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_reader_matches_feast_sdk(store: str, world: World, request: pytest.FixtureRequest) -> None:
    w = world if store == "sqlite" else request.getfixturevalue("redis_world")
    open_backend(feature_settings(w)).velocity().record(["VELOCITY-ONLY"])  # an unknown merchant: no side effects
    ids = _ids(w)
    _check_against_sdk(w, ids)
    got = open_backend(feature_settings(w)).reader().read(ids)
    assert not got.found[ids.index("VELOCITY-ONLY")] and not got.found[ids.index("NOT-A-MERCHANT")]
    # Velocity-only rows still carry their values and time.
    v = ids.index("VELOCITY-ONLY")
    assert got.matrix[v, MATRIX_COLUMNS.index("apps_1h")] >= 1
    assert got.view_ts is not None and got.view_ts[v, VIEW_NAMES.index("merchant_velocity")] > 0
    # Absent views read as time 0; present ones as the snapshot.
    nb = ids.index(_special_ids(w)["no_bureau"][0])
    assert got.view_ts[nb, VIEW_NAMES.index("merchant_bureau")] == 0
    assert got.view_ts[nb, VIEW_NAMES.index("merchant_flows")] > 0


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_random_batch_matches_feast_sdk(store: str, world: World, request: pytest.FixtureRequest) -> None:
    w = world if store == "sqlite" else request.getfixturevalue("redis_world")
    rng = np.random.default_rng(11)
    ids = [f"M{i:08d}" for i in rng.integers(0, 3200, 250)]  # includes ids past the population
    _check_against_sdk(w, ids)


@pytest.mark.skipif(not _sqlite.AVAILABLE, reason="sqlite3 C API not resolvable here")
def test_sqlite_c_reader_equals_python_fallback(world: World) -> None:
    s = feature_settings(world)
    ids = _ids(world) + [f"M{i:08d}" for i in range(0, 3000, 7)]
    a = SqliteReader(s, TagCatalog.load(s).n_bytes).read(ids)
    b = PySqliteReader(s, TagCatalog.load(s).n_bytes).read(ids)
    assert np.array_equal(a.matrix, b.matrix, equal_nan=True)
    assert np.array_equal(a.tags, b.tags)
    assert np.array_equal(a.found, b.found) and np.array_equal(a.event_ts, b.event_ts)
    assert a.view_ts is not None and b.view_ts is not None
    assert np.array_equal(a.view_ts, b.view_ts)


def test_empty_batch(world: World) -> None:
    got = open_backend(feature_settings(world)).reader().read([])
    assert got.matrix.shape == (0, len(MATRIX_COLUMNS)) and len(got) == 0


def test_tag_view_is_one_bytes_feature() -> None:
    assert TAGS.fields == (("tags", "bytes"),)
    assert "window_state" not in MATRIX_COLUMNS and "tags" not in MATRIX_COLUMNS


def test_stale_rows_are_flagged(world: World) -> None:
    reader = open_backend(feature_settings(world, max_feature_age_s=3600.0)).reader()
    batch = reader.read(["M00000001", "NOPE", "M00000002"])
    t = float(batch.event_ts[0])
    age = batch.age_s(now_s=t + 100.0)
    assert age[0] == pytest.approx(100.0) and math.isnan(age[1])
    # The configured limit (1 h) is the default; an explicit one overrides it.
    assert batch.stale(t + 3599.0).tolist() == [False, False, False]
    assert batch.stale(t + 3601.0).tolist() == [True, False, True]
    assert batch.stale(t + 3601.0, max_age_s=7200.0).tolist() == [False, False, False]
    reader.close()
