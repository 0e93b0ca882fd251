"""The packed Redis layout: Feast's custom online store, our reader, writer and velocity on it.

Everything runs against a private ``redis-server`` this module starts on a loopback port
(and stops after), holding four Feast projects built from one small population:

- ``standard``: Feast's standard layout, written by our materializer (byte-identical to
  ``feast materialize``, tested elsewhere);
- ``ours``: the packed layout, written by our materializer (``PackedWriter``);
- ``feast``: the packed layout, written by ``feast materialize`` itself through
  ``PackedRedisOnlineStore`` (the yaml names the class);
- a scratch project per test where one writes.

The checks: Feast's SDK reads the packed layout exactly as it reads the standard one,
our writer writes exactly the bytes ``feast materialize`` writes, our packed reader
returns exactly what the standard reader returns, and velocity updates keep both in step.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
import pytest
import yaml

from features import catalog
from features.errors import FeatureDataError
from features.feast_repo import apply, open_store
from features.materialize import materialize, materialize_with_feast
from features.settings import FeatureSettings
from features.stores import layout as feast_layout
from features.stores import open_backend
from features.stores.packed import PackedBackend, layout
from features.stores.packed.feast_store import CLASS_PATH, PackedRedisOnlineStore
from features.stores.redis import RedisBackend
from tests.conftest import AS_OF, _window
from tests.support import throwaway_redis

MERCHANTS = 600
REFS = [f"{v.name}:{f}" for v in catalog.ALL_VIEWS for f in v.field_names]


@dataclass(frozen=True)
class Worlds:
    url: str
    data: Path  # raw + offline tables, shared by every project
    standard: FeatureSettings
    ours: FeatureSettings
    feast: FeatureSettings
    tmp: Path

    def scratch(self, layout_: str = "packed") -> FeatureSettings:
        """A fresh project on the private server (own data dir, same offline tables)."""
        root = self.tmp / f"scratch-{uuid.uuid4().hex[:8]}"
        for sub in ("raw", "offline"):
            shutil.copytree(self.data / sub, root / sub)
        return _settings(root, self.url, f"scr{uuid.uuid4().hex[:8]}", layout_)


def _settings(root: Path, url: str, project: str, layout_: str) -> FeatureSettings:
    return FeatureSettings.model_validate({
        "data_dir": root, "online_store": "redis", "redis_url": url, "project": project,
        "redis_layout": layout_, "max_feature_age_s": 10 * 365 * 86400.0,
    })


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server (no persistence), up until the module's tests are done."""
    with throwaway_redis() as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def worlds(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Worlds:
    from features.population import build_offline_tables, generate_population

    tmp = tmp_path_factory.mktemp("packed")
    data = tmp / "data"
    generate_population(data, merchants=MERCHANTS, seed=7, as_of=AS_OF)
    build_offline_tables(data, AS_OF)
    built = {}
    for name, layout_ in (("standard", "standard"), ("ours", "packed"), ("feast", "packed")):
        root = tmp / name
        for sub in ("raw", "offline"):
            shutil.copytree(data / sub, root / sub)
        settings = _settings(root, redis_url, f"pk{name}{uuid.uuid4().hex[:6]}", layout_)
        apply(settings)
        if name == "feast":
            materialize_with_feast(settings, *_window(AS_OF))
        else:
            materialize(settings, *_window(AS_OF))
        built[name] = settings
    return Worlds(redis_url, data, built["standard"], built["ours"], built["feast"], tmp)


def _raw(settings: FeatureSettings) -> RedisBackend:
    return RedisBackend(settings)


def _packed_rows(settings: FeatureSettings) -> dict[bytes, bytes]:
    """Every packed key of the project (without the project part) and its value."""
    client = _raw(settings).client
    out: dict[bytes, bytes] = {}
    cursor = b"0"
    suffix = b"}:" + settings.project.encode() + b":"
    while True:
        reply = client.command(b"SCAN", cursor, b"MATCH", layout.scan_pattern(settings.project), b"COUNT", b"10000")
        assert isinstance(reply, list)
        cursor, keys = reply
        if keys:
            values = client.command(b"MGET", *keys)
            assert isinstance(values, list)
            out.update({k.replace(suffix, b"}:"): v for k, v in zip(keys, values, strict=True)})
        if cursor == b"0":
            return out


def _special_ids(data: Path) -> list[str]:
    """Merchants with null values and merchants without a bureau record."""
    flows = pl.read_parquet(data / "offline" / "merchant_flows.parquet")
    bureau = set(pl.read_parquet(data / "offline" / "merchant_bureau.parquet")[catalog.JOIN_KEY].to_list())
    with_null = flows.filter(pl.any_horizontal(pl.all().exclude(catalog.JOIN_KEY).is_null()))[catalog.JOIN_KEY]
    no_bureau = [m for m in flows[catalog.JOIN_KEY].to_list() if m not in bureau]
    assert len(with_null) and no_bureau, "the population should have null values and absent views"
    return [*with_null.head(3).to_list(), *no_bureau[:3]]


def _ids(worlds: Worlds) -> list[str]:
    rng = np.random.default_rng(5)
    return [
        "M00000000", "M00000017", "NOT-A-MERCHANT", "M00000017", "", *_special_ids(worlds.data),
        *(f"M{i:08d}" for i in rng.integers(0, MERCHANTS + 50, 120)),
    ]


def _sdk(settings: FeatureSettings, ids: list[str]) -> dict[str, list[object]]:
    store = open_store(settings)
    return store.get_online_features(features=REFS, entity_rows=[{catalog.JOIN_KEY: m} for m in ids]).to_dict()


def _same_batch(a: object, b: object) -> None:
    for name in ("matrix", "tags", "found", "event_ts", "view_ts"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


# --- Feast: the custom store ------------------------------------------------------------


def test_yaml_names_the_custom_store(worlds: Worlds) -> None:
    doc = yaml.safe_load((worlds.ours.repo_dir / "feature_store.yaml").read_text())
    assert doc["online_store"]["type"] == CLASS_PATH
    assert doc["online_store"]["connection_string"].startswith("127.0.0.1:")
    standard = yaml.safe_load((worlds.standard.repo_dir / "feature_store.yaml").read_text())
    assert standard["online_store"]["type"] == "redis"  # the standard layout stays Feast's own store
    assert isinstance(open_store(worlds.ours)._get_provider().online_store, PackedRedisOnlineStore)


def test_sdk_reads_packed_as_it_reads_standard(worlds: Worlds) -> None:
    ids = _ids(worlds)
    want = _sdk(worlds.standard, ids)
    for settings in (worlds.feast, worlds.ours):
        got = _sdk(settings, ids)
        assert got.keys() == want.keys()
        for ref in want:
            assert got[ref] == want[ref], ref
    assert any(v is None for v in want["existing_debt_minor"]) and any(v is not None for v in want["tags"])


def test_our_writer_writes_what_feast_materialize_writes(worlds: Worlds) -> None:
    ours, theirs = _packed_rows(worlds.ours), _packed_rows(worlds.feast)
    assert len(ours) > 3 * MERCHANTS  # every batch view of (nearly) every merchant
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if ours[k] != theirs[k]] == []


def test_one_value_per_merchant_and_view(worlds: Worlds) -> None:
    key = feast_layout.entity_keys(["M00000001"])[0]
    client = _raw(worlds.ours).client
    kind = client.command(b"TYPE", layout.key(key, worlds.ours.project, catalog.FLOWS.name))
    assert kind == b"string"
    blob = client.command(b"GET", layout.key(key, worlds.ours.project, catalog.FLOWS.name))
    assert isinstance(blob, bytes)
    assert layout.unpack_header(blob)[0] == layout.catalog_schema_id(catalog.FLOWS)
    # Every view of the merchant hashes to one Redis Cluster slot.
    assert len({_slot(layout.key(key, worlds.ours.project, v.name)) for v in catalog.ALL_VIEWS}) == 1


def _slot(key: bytes) -> bytes:
    """The hash tag Redis Cluster slots ``key`` by (first ``{`` to the next ``}``)."""
    start = key.index(b"{")
    end = key.index(b"}", start + 1)
    return key[start + 1 : end]


# --- the project's reader ---------------------------------------------------------------


def test_packed_reader_matches_standard_reader(worlds: Worlds) -> None:
    ids = _ids(worlds)
    standard = open_backend(worlds.standard).reader().read(ids)
    assert isinstance(open_backend(worlds.ours), PackedBackend)
    for settings in (worlds.ours, worlds.feast):
        _same_batch(open_backend(settings).reader().read(ids), standard)
    assert standard.found.sum() > len(ids) // 2 and not standard.found[ids.index("NOT-A-MERCHANT")]


def test_packed_reader_matches_feast_sdk(worlds: Worlds) -> None:
    ids = _ids(worlds)
    want = _sdk(worlds.feast, ids)
    got = open_backend(worlds.ours).reader().read(ids)
    for j, col in enumerate(catalog.MATRIX_COLUMNS):
        expected = np.array([np.nan if w is None else cast(float, w) for w in want[col]], dtype=np.float32)
        assert np.array_equal(got.matrix[:, j], expected, equal_nan=True), col
    for i, w in enumerate(want["tags"]):
        assert got.tags[i].tobytes() == (w or bytes(got.tags.shape[1]))


def test_empty_batch(worlds: Worlds) -> None:
    assert len(open_backend(worlds.ours).reader().read([])) == 0


def test_a_value_of_another_schema_is_refused(worlds: Worlds) -> None:
    s = worlds.scratch()
    apply(s)
    key = layout.key(feast_layout.entity_keys(["M00000001"])[0], s.project, catalog.PROFILE.name)
    client = _raw(s).client
    client.command(b"SET", key, layout.pack(12345, 1_700_000_000_000_000, [b""] * len(catalog.PROFILE.fields)))
    with pytest.raises(FeatureDataError, match=r"row 0 view 1: not a packed value"):
        open_backend(s).reader().read(["M00000001"])
    with pytest.raises(ValueError, match="another definition"):
        _sdk(s, ["M00000001"])
    client.command(b"SET", key, b"\x01\x02")  # truncated: refused, never read past
    with pytest.raises(FeatureDataError):
        open_backend(s).reader().read(["M00000001"])
    open_backend(s).drop_project()
    assert client.command(b"EXISTS", key) == 0


# --- writes: dedup, velocity, cleanup ---------------------------------------------------


def test_writer_keeps_feast_dedup_rule(worlds: Worlds) -> None:
    s = worlds.scratch()
    apply(s)
    materialize(s, *_window(AS_OF))
    reader = open_backend(s).reader()
    before = reader.read(["M00000003"])
    view = catalog.PROFILE
    frame = pl.read_parquet(s.offline_dir / f"{view.name}.parquet").filter(pl.col(catalog.JOIN_KEY) == "M00000003")
    keys = feast_layout.entity_keys(["M00000003"])
    col = catalog.MATRIX_COLUMNS.index("business_age_days")
    older = frame.with_columns(pl.col("event_timestamp") - dt.timedelta(days=1), pl.lit(1).alias("business_age_days"))
    newer = frame.with_columns(pl.col("event_timestamp") + dt.timedelta(days=1), pl.lit(2).alias("business_age_days"))
    writer = open_backend(s).writer()
    try:
        assert writer.write(view, older, keys) == 0  # not newer than the stored row: skipped
        writer.close()
        assert reader.read(["M00000003"]).matrix[0, col] == before.matrix[0, col]
        writer = open_backend(s).writer()
        assert writer.write(view, newer, keys) == len(view.fields)
    finally:
        writer.close()
    after = reader.read(["M00000003"])
    assert after.matrix[0, col] == 2.0
    assert after.view_ts is not None and before.view_ts is not None
    assert after.view_ts[0, 1] == before.view_ts[0, 1] + 86_400
    open_backend(s).drop_project()


def test_velocity_keeps_packed_and_standard_in_step(worlds: Worlds) -> None:
    packed, standard = worlds.scratch("packed"), worlds.scratch("standard")
    ids = ["M00000001", "M00000002", "M00000001", "VELOCITY-ONLY"]
    now = 1_790_000_000.0
    for t in (now, now + 30, now + 3_700):  # the hour window slides between the last two
        a = open_backend(packed).velocity().record(ids, now_s=t)
        b = open_backend(standard).velocity().record(ids, now_s=t)
        assert a.apps_1h.tolist() == b.apps_1h.tolist() and a.apps_24h.tolist() == b.apps_24h.tolist()
    assert a.apps_24h.tolist() == [6, 3, 6, 3] and a.apps_1h.tolist() == [2, 1, 2, 1]
    for s in (packed, standard):
        apply(s)
    _same_batch(open_backend(packed).reader().read(ids), open_backend(standard).reader().read(ids))
    # The SDK reads the same velocity row (window state bytes included) from both layouts.
    refs = [f"{catalog.VELOCITY.name}:{f}" for f in catalog.VELOCITY.field_names]
    rows = [{catalog.JOIN_KEY: m} for m in ids]
    got = open_store(packed).get_online_features(features=refs, entity_rows=rows).to_dict()
    want = open_store(standard).get_online_features(features=refs, entity_rows=rows).to_dict()
    assert got == want and got["window_state"][0]
    for s in (packed, standard):
        open_backend(s).drop_project()


def test_velocity_writes_what_feast_push_writes(worlds: Worlds) -> None:
    s, pushed = worlds.scratch(), worlds.scratch()
    apply(pushed)
    open_backend(s).velocity().record(["M00000001", "M00000001"], now_s=1_790_000_123.456789)
    key = feast_layout.entity_keys(["M00000001"])[0]
    ours = _raw(s).client.command(b"GET", layout.key(key, s.project, catalog.VELOCITY.name))
    apply(s)
    refs = [f"{catalog.VELOCITY.name}:{f}" for f in catalog.VELOCITY.field_names]
    row = open_store(s).get_online_features(features=refs, entity_rows=[{catalog.JOIN_KEY: "M00000001"}]).to_dict()
    assert row["apps_1h"] == [2]
    stamp = dt.datetime.fromtimestamp(1_790_000_123.456789, tz=dt.timezone.utc)
    frame = pl.DataFrame({
        catalog.JOIN_KEY: ["M00000001"], "apps_1h": [2], "apps_24h": [2], "window_state": row["window_state"],
        "event_timestamp": [stamp], "created_timestamp": [stamp],
    }).to_pandas()
    open_store(pushed).push("merchant_velocity_push", frame)
    theirs = _raw(pushed).client.command(b"GET", layout.key(key, pushed.project, catalog.VELOCITY.name))
    assert isinstance(ours, bytes) and ours == theirs
    for x in (s, pushed):
        open_backend(x).drop_project()


def test_feast_teardown_removes_the_rows(worlds: Worlds) -> None:
    s = worlds.scratch()
    apply(s)
    materialize(s, *_window(AS_OF))
    assert len(_packed_rows(s)) > MERCHANTS
    open_store(s).teardown()  # type: ignore[no-untyped-call]
    assert _packed_rows(s) == {}


def test_the_packed_online_path_imports_neither_feast_nor_polars(tmp_path: Path) -> None:
    """A replica on the packed layout (backend, reader, velocity) stays as light as on the standard one."""
    import sys

    probe = (
        "import sys\n"
        "from features.settings import FeatureSettings\n"
        "from features.stores import open_backend\n"
        f"s = FeatureSettings(data_dir={str(tmp_path)!r}, online_store='redis', redis_layout='packed')\n"
        "b = open_backend(s); b.reader(tag_bytes=8); b.velocity()\n"
        "import features.stores.packed.reader, features.stores.packed.velocity\n"
        "print(type(b).__name__ + ';' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('polars', 'feast', 'redis') or m.startswith('features.population'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "PackedBackend;"
