"""Our batched readers return exactly what Feast's own SDK returns, on both stores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from features import MATRIX_COLUMNS
from features.catalog import ALL_VIEWS, JOIN_KEY, TAGS
from features.feast_repo import open_store
from features.online.reader import open_reader
from tests.conftest import World, feature_settings


def _sdk(world: World, ids: list[str]) -> dict[str, list[object]]:
    store = open_store(feature_settings(world))
    refs = [f"{v.name}:{f}" for v in ALL_VIEWS for f in v.field_names]
    return store.get_online_features(features=refs, entity_rows=[{JOIN_KEY: m} for m in ids]).to_dict()


def _ids(world: World) -> list[str]:
    # Known merchants, an unknown one, and a repeat (a batch may name a merchant twice).
    return ["M00000000", "M00000017", "M00002999", "NOT-A-MERCHANT", "M00000017", "M00001234"]


def _check(world: World) -> None:
    ids = _ids(world)
    want = _sdk(world, ids)
    reader = open_reader(feature_settings(world))
    got = reader.read(ids)
    assert got.matrix.shape == (len(ids), len(MATRIX_COLUMNS))
    assert got.matrix.dtype == np.float32 and got.matrix.flags.c_contiguous
    for j, col in enumerate(MATRIX_COLUMNS):
        for i in range(len(ids)):
            w = want[col][i]
            g = float(got.matrix[i, j])
            if w is None:
                assert math.isnan(g), (ids[i], col, g)
            else:
                assert g == float(np.float32(w)), (ids[i], col, w, g)
    for i in range(len(ids)):
        w = want["tags"][i]
        if w is None:
            assert not got.tags[i].any()
        else:
            assert got.tags[i].tobytes() == w
    assert got.found.tolist() == [True, True, True, False, True, True]
    assert (got.event_ts[got.found] > 0).all() and got.event_ts[3] == 0
    reader.close()


def test_sqlite_reader_matches_feast_sdk(world: World) -> None:
    _check(world)


def test_redis_reader_matches_feast_sdk(redis_world: World) -> None:
    _check(redis_world)


def test_tag_view_is_one_bytes_feature() -> None:
    assert TAGS.fields == (("tags", "bytes"),)


def test_stale_rows_are_flagged(world: World) -> None:
    reader = open_reader(feature_settings(world))
    batch = reader.read(["M00000001", "NOPE"])
    age = batch.age_s(now_s=float(batch.event_ts[0]) + 100.0)
    assert age[0] == pytest.approx(100.0)
    assert math.isnan(age[1])
