"""Every Redis path on a 3-master Redis Cluster answers as it does on a single Redis.

Two copies of one small world, materialized by our writers into a standalone redis-server
and into the cluster (both layouts), are read, counted (velocity), deduplicated
(idempotency), capped (exposure) and controlled through the same backends; the answers
must be identical. Redirects are exercised on a live migration of one merchant's slot:
``ASK`` while it is migrating, ``MOVED`` once it has moved.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from features.batch import FeatureBatch
from features.feast_repo import apply
from features.materialize import materialize
from features.settings import FeatureSettings
from features.stores import layout as feast_layout
from features.stores import open_backend
from features.stores.packed import layout as packed_layout
from features.stores.redis import RedisBackend
from features.stores.redis.client import RedisClient
from features.stores.redis.cluster import ClusterClient
from features.stores.redis.cluster_jobs import key_slot
from tests.conftest import AS_OF, _window
from tests.features.cluster.conftest import MERCHANTS, cluster_settings
from tests.features.redis_cluster import LocalCluster, poll, redis_command


@dataclass(frozen=True)
class Pair:
    single: FeatureSettings
    cluster: FeatureSettings
    ids: list[str]


def _world(data: Path, url: str, layout_: str, cluster: bool) -> FeatureSettings:
    root = data.parent / f"{layout_}-{'cluster' if cluster else 'single'}"
    if not root.exists():
        for sub in ("raw", "offline"):
            shutil.copytree(data / sub, root / sub)
    s = cluster_settings(root, url, f"cl{layout_[:3]}{uuid.uuid4().hex[:6]}", layout_, cluster=cluster)
    apply(s)
    materialize(s, *_window(AS_OF))
    return s


@pytest.fixture(scope="module", params=["standard", "packed"])
def pair(request: pytest.FixtureRequest, data: Path, cluster: LocalCluster, single_url: str) -> Pair:
    from features.population.generate import merchant_ids

    return Pair(_world(data, single_url, request.param, False), _world(data, cluster.url, request.param, True),
                merchant_ids(0, MERCHANTS))


def _same(a: FeatureBatch, b: FeatureBatch) -> None:
    np.testing.assert_array_equal(a.matrix, b.matrix)  # NaN == NaN here
    np.testing.assert_array_equal(a.tags, b.tags)
    np.testing.assert_array_equal(a.found, b.found)
    np.testing.assert_array_equal(a.event_ts, b.event_ts)
    np.testing.assert_array_equal(a.view_ts, b.view_ts)


def test_key_slot_is_redis_keyslot(cluster: LocalCluster) -> None:
    keys = [b"merchant-1", b"{m-1}:a", b"{m-1}:b", b"x{}y", b"{}{z}", b"a{b}c{d}", b"\x00\xff{\x01}"]
    for k in keys[:6]:
        assert key_slot(k) == int(redis_command(cluster.ports[0], "CLUSTER", "KEYSLOT", k.decode()))
    assert key_slot(b"{m-1}:a") == key_slot(b"{m-1}:b")


def test_reads_equal_single_redis(pair: Pair) -> None:
    ids = pair.ids
    batch = [*ids[:300], "no-such-merchant", ids[5], ids[5]]  # repeats and an unknown id
    single, clustered = open_backend(pair.single).reader(), open_backend(pair.cluster).reader()
    a, b = single.read(batch), clustered.read(batch)
    assert int(a.found.sum()) >= 250  # the world is really there
    _same(a, b)
    client = open_backend(pair.cluster).client
    assert isinstance(client, ClusterClient)
    _same(single.read(ids[:1]), clustered.read(ids[:1]))
    _same(single.read([]), clustered.read([]))


def test_rows_are_spread_over_every_master(pair: Pair, cluster: LocalCluster) -> None:
    sizes = [int(redis_command(p, "DBSIZE").strip()) for p in cluster.master_ports()]
    assert all(s > 0 for s in sizes), sizes


def test_velocity_equals_single_redis(pair: Pair) -> None:
    ids = pair.ids[:120]
    batch = [*ids, ids[0], ids[1]]  # a merchant twice in a batch counts twice, in order
    now = 1_790_000_000.0
    va, vb = open_backend(pair.single).velocity(), open_backend(pair.cluster).velocity()
    for step in range(3):
        ra, rb = va.record(batch, now + step * 61), vb.record(batch, now + step * 61)
        np.testing.assert_array_equal(ra.apps_1h, rb.apps_1h)
        np.testing.assert_array_equal(ra.apps_24h, rb.apps_24h)
        assert int(rb.apps_1h[-1]) >= 2 * (step + 1)  # ids[1], twice a batch, every step
    _same(open_backend(pair.single).reader().read(ids), open_backend(pair.cluster).reader().read(ids))


def test_idempotency_equals_single_redis(pair: Pair) -> None:
    apps = [f"app-{uuid.uuid4().hex[:8]}-{i}" for i in range(150)]
    records = [f"rec{i}".encode() for i in range(150)]
    out = []
    for s in (pair.single, pair.cluster):
        idem = open_backend(s).idempotency(60.0, "v1")
        assert idem.lookup(apps) == {}
        first = idem.save(apps[:100], records[:100])
        again = idem.save(apps[50:], [b"other"] * 100)  # 50 already decided: their records come back
        out.append((first, again, idem.lookup(apps)))
    assert out[0] == out[1]
    assert out[1][0] == {} and out[1][1] == {a: r for a, r in zip(apps[50:100], records[50:100], strict=True)}


def test_moved_and_ask_are_followed(pair: Pair, cluster: LocalCluster) -> None:
    """Migrate one merchant's slot to another master while reading it: ASK mid-migration,
    MOVED after, and the reads never change."""
    ids = pair.ids[:50]
    reader = open_backend(pair.cluster).reader()
    before = reader.read(ids)
    ekey = feast_layout.entity_keys([ids[7]])[0]
    keys = ([ekey + pair.cluster.project.encode()] if pair.cluster.redis_layout == "standard" else
            [packed_layout.key(ekey, pair.cluster.project, v) for v in
             [v.name for v in __import__("features.catalog", fromlist=["ALL_VIEWS"]).ALL_VIEWS]])
    slot = key_slot(keys[0])
    src = _owner(cluster, slot)
    dst = next(p for p in cluster.master_ports() if p != src)
    src_id, dst_id = _id(src), _id(dst)
    redis_command(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
    redis_command(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id)
    # Move every key of the slot: the source now answers ASK for them.
    node = _raw(src)
    while names := node.command(b"CLUSTER", b"GETKEYSINSLOT", str(slot).encode(), b"1000"):
        assert isinstance(names, list) and set(keys) <= set(names)
        node.command(b"MIGRATE", b"127.0.0.1", str(dst).encode(), b"", b"0", b"5000", b"KEYS", *names,
                     timeout_s=10)
    client = open_backend(pair.cluster).client  # a fresh map still sends the slot to the source
    assert isinstance(client, ClusterClient)
    fresh = type(reader)(client, pair.cluster, before.tags.shape[1])
    _same(before, reader.read(ids))  # via ASK
    _same(before, fresh.read(ids))
    assert client.redirects["ASK"] >= 1
    for p in cluster.master_ports():
        redis_command(p, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)
    poll("slot owned by the new master everywhere", lambda: all(_owner(cluster, slot, p) == dst
                                                                for p in cluster.master_ports()))
    _same(before, fresh.read(ids))  # via MOVED, then the refreshed map
    assert client.redirects["MOVED"] >= 1
    moved = client.redirects["MOVED"]
    _same(before, fresh.read(ids))
    assert client.redirects["MOVED"] == moved  # the map learned: no redirect any more


def _raw(port: int) -> RedisClient:
    """A plain client of one node (binary keys, which redis-cli's arguments cannot carry)."""
    return RedisClient(FeatureSettings(redis_url=f"redis://127.0.0.1:{port}/0"))


def _id(port: int) -> str:
    return redis_command(port, "CLUSTER", "MYID").strip()


def _owner(cluster: LocalCluster, slot: int, ask: int | None = None) -> int:
    for line in redis_command(ask or cluster.ports[0], "CLUSTER", "NODES").splitlines():
        parts = line.split()
        if "master" not in parts[2]:
            continue
        for r in parts[8:]:
            if r.startswith("["):
                continue
            a, _, b = r.partition("-")
            if int(a) <= slot <= int(b or a):
                return int(parts[1].split(":")[1].split("@")[0])
    raise LookupError(slot)


def test_exposure_and_controls_equal_single_redis(pair: Pair) -> None:
    """Exposure's and controls' scripts span several keys: hash-tagged, they run on a cluster
    (no CROSSSLOT) and allocate exactly as on a single Redis."""
    from tests.features.test_exposure_store import AMOUNT, BOTH, COUNT, claims

    caps = [AMOUNT, COUNT, BOTH]
    items = [(300, [(0, "a"), (1, "x"), (2, "p")]), (500, [(0, "a"), (2, "p")]), (400, [(0, "b"), (1, "x")]),
             (350, [(0, "a"), (1, "x"), (2, "q")]), (900, [(0, "b")])]
    got = []
    for base in (pair.single, pair.cluster):
        s = base.model_copy(update={"project": f"ex{uuid.uuid4().hex[:6]}"})
        state = RedisBackend(s).exposure()
        first = state.reserve(caps, claims(items), 1_790_000_000.0)
        second = state.reserve(caps, claims(items), 1_790_000_001.0)
        got.append((first.amount.tolist(), second.amount.tolist(), state.usage(AMOUNT, "a", 1_790_000_002.0)))
        controls = RedisBackend(s).controls()
        snap = controls.snapshot()
        got.append((controls.version(), snap.version, snap.controls, controls.history(5)))
    assert got[0] == got[2] and got[1] == got[3]
    assert sum(got[0][0]) > 0  # something was granted
