"""The bulk materializer writes exactly the layout ``feast materialize`` writes."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from pathlib import Path

from features.catalog import ALL_VIEWS
from features.feast_repo import apply, open_store
from features.materialize import materialize
from features.settings import FeatureSettings
from tests.conftest import World


def _dump(path: Path, project: str) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    out = {}
    for v in ALL_VIEWS:
        out[v.name] = conn.execute(
            f'SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts FROM "{project}_{v.name}" '
            "ORDER BY entity_key, feature_name"
        ).fetchall()
    conn.close()
    return out


def test_bulk_sqlite_layout_equals_feast_materialize(world: World, tmp_path: Path) -> None:
    roots = {}
    for name in ("feast", "bulk"):
        root = tmp_path / name
        for sub in ("raw", "offline"):
            shutil.copytree(world.data_dir / sub, root / sub)
        roots[name] = root
    start = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
    s_feast = FeatureSettings(data_dir=roots["feast"])
    s_bulk = FeatureSettings(data_dir=roots["bulk"])
    apply(s_feast)
    apply(s_bulk)
    open_store(s_feast).materialize(start, end)
    report = materialize(s_bulk, start, end)
    assert report.entities > 0
    a, b = _dump(s_feast.sqlite_path, "creditauth"), _dump(s_bulk.sqlite_path, "creditauth")
    for view in a:
        assert len(a[view]) == len(b[view]) > 0, view
        assert a[view] == b[view], view
    # The registry records the interval like feast materialize does.
    fv = open_store(s_bulk).get_feature_view("merchant_flows")
    assert fv.materialization_intervals and fv.materialization_intervals[-1][1] == end
