"""Exposure counters in both stores: grants as a decision table, the Lua script against the
Python reference, expiry and release, exactness under concurrent callers, a dead store.

Real stores only: a SQLite file of the test's own and the shared Redis under a project
prefix of the test's own (dropped after).
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import FeatureSettings, OnlineStoreUnavailable
from features.exposure import CapLimit, Claims, ExposureState, allocate
from features.stores.redis import RedisBackend
from features.stores.sqlite import SqliteBackend
from tests.conftest import redis_available
from tests.support import free_port

NOW = 1_790_000_000.0
MIN = 100  # the smallest grant a reduction may leave
_STORES = [
    "sqlite",
    pytest.param("redis", marks=pytest.mark.skipif(not redis_available(), reason="Redis not reachable on 6379")),
]


class Stores:
    """Opens exposure states on one store (each its own connection) and cleans up after."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.settings = FeatureSettings(data_dir=root, online_store=kind, project=f"caexp{uuid.uuid4().hex[:10]}",
                                        timeout_s=5.0)
        self._opened: list[ExposureState] = []
        self._redis: list[RedisBackend] = []

    def open(self) -> ExposureState:
        if self.kind == "redis":
            backend = RedisBackend(self.settings)
            self._redis.append(backend)
            state = backend.exposure()
        else:
            state = SqliteBackend(self.settings).exposure()
        self._opened.append(state)
        return state

    def close(self) -> None:
        if self._redis:
            self._redis[0].drop_project()
        for s in self._opened:
            s.close()


@pytest.fixture(params=_STORES)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    s = Stores(request.param, tmp_path)
    yield s
    s.close()


def claims(items: list[tuple[int, list[tuple[int, str]]]]) -> Claims:
    """Claims from ``(amount, [(cap, value), ...])`` per item."""
    index: dict[tuple[int, str], int] = {}
    counter: list[int] = []
    starts = [0]
    for _, keys in items:
        counter += [index.setdefault(k, len(index)) for k in keys]
        starts.append(len(counter))
    return Claims(
        counters=list(index), amount=np.array([a for a, _ in items], dtype=np.int64),
        token=uuid.uuid4().hex.encode(),
        starts=np.array(starts, np.intp), counter=np.array(counter, np.intp), min_amount=MIN,
    )


AMOUNT = CapLimit("amount", 3600, max_amount=1000, max_count=None, refer=False)
COUNT = CapLimit("count", 3600, max_amount=None, max_count=2, refer=False)
REFER = CapLimit("refer", 3600, max_amount=1000, max_count=None, refer=True)
BOTH = CapLimit("both", 3600, max_amount=1000, max_count=3, refer=False)

# caps, claims in order (amount, caps by index into caps, one shared value), expected grants,
# expected caps reached per item (by cap index).
TABLE = [
    ("fits", [AMOUNT], [(400, [0]), (600, [0])], [400, 600], [(), ()]),
    ("reduce to what remains", [AMOUNT], [(700, [0]), (500, [0])], [700, 300], [(), (0,)]),
    ("remains below the minimum: refer", [AMOUNT], [(950, [0]), (100, [0])], [950, 0], [(), (0,)]),
    ("used up, later items refer", [AMOUNT], [(1000, [0]), (200, [0]), (150, [0])], [1000, 0, 0],
     [(), (0,), (0,)]),
    ("refer policy never reduces", [REFER], [(700, [0]), (500, [0]), (300, [0])], [700, 0, 300], [(), (0,), ()]),
    ("count cap refers the third", [COUNT], [(5, [0]), (5, [0]), (5, [0])], [5, 5, 0], [(), (), (0,)]),
    ("amount and count in one cap", [BOTH], [(100, [0])] * 4, [100, 100, 100, 0], [(), (), (), (0,)]),
    ("two caps: the tighter one wins, both named when both short",
     [AMOUNT, CapLimit("wide", 3600, 1500, None, False)],
     [(900, [0, 1]), (400, [1]), (300, [0, 1])], [900, 400, 100], [(), (), (0, 1)]),
    ("a referred item reserves nothing in the other cap", [AMOUNT, COUNT],
     [(1000, [0]), (10, [0, 1]), (10, [1]), (10, [1])], [1000, 0, 10, 10], [(), (0,), (), ()]),
]


@pytest.mark.parametrize(("caps", "items", "grants", "reached"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_grants_decision_table(stores: Stores, caps: list[CapLimit],
                               items: list[tuple[int, list[int]]], grants: list[int],
                               reached: list[tuple[int, ...]]) -> None:
    c = claims([(a, [(j, "v") for j in js]) for a, js in items])
    state = stores.open()
    got = state.reserve(caps, c, NOW)
    assert got.amount.tolist() == grants
    assert [tuple(sorted(c.counters[p][0] for p in got.reached(i))) for i in range(len(c))] == reached
    for j, cap in enumerate(caps):  # what the store holds is exactly what it granted
        mine = [g for g, (_, js) in zip(grants, items, strict=True) if g > 0 and j in js]
        assert state.usage(cap, "v", NOW) == (sum(mine), len(mine))
    # The reference gives the same grants from the same start.
    ref = allocate(caps, c, [[0, 0] for _ in c.counters])
    assert ref.amount.tolist() == grants


def test_values_have_their_own_counters(stores: Stores) -> None:
    state = stores.open()
    got = state.reserve([AMOUNT], claims([(800, [(0, "a")]), (800, [(0, "b")]), (800, [(0, "a")])]), NOW)
    assert got.amount.tolist() == [800, 800, 200]
    assert state.usage(AMOUNT, "a", NOW) == (1000, 2)
    assert state.usage(AMOUNT, "b", NOW) == (800, 1)


def test_reservations_lapse_at_expiry_and_release_gives_back(stores: Stores) -> None:
    state = stores.open()
    first = state.reserve([AMOUNT], claims([(600, [(0, "v")])]), NOW)
    later = claims([(400, [(0, "v")]), (300, [(0, "v")])])
    got = state.reserve([AMOUNT], later, NOW + 1800)
    assert first.amount.tolist() == [600] and got.amount.tolist() == [400, 0]
    assert state.usage(AMOUNT, "v", NOW + 3599) == (1000, 2)
    # The first lapses an hour after it was made: its 600 are free again, the later 400 are not.
    assert state.usage(AMOUNT, "v", NOW + 3600) == (400, 1)
    assert state.reserve([AMOUNT], claims([(700, [(0, "v")])]), NOW + 3600).amount.tolist() == [600]
    # Release gives a reservation back at once; a second release of it changes nothing.
    state.release([AMOUNT], later, got, [0])
    state.release([AMOUNT], later, got, [0])
    assert state.usage(AMOUNT, "v", NOW + 3600) == (600, 1)
    assert state.reserve([AMOUNT], claims([(500, [(0, "v")])]), NOW + 3601).amount.tolist() == [400]


def test_many_concurrent_callers_never_overdraw_a_small_cap(stores: Stores) -> None:
    """8 callers, each with its own connection, barrier-started, 30 batches of 4 claims each
    against one amount-and-count cap: the grants sum exactly to what the store holds, within
    the cap, and the cap is used up."""
    cap = CapLimit("small", 3600, max_amount=50_000, max_count=150, refer=False)
    callers = 8
    states = [stores.open() for _ in range(callers)]
    barrier = threading.Barrier(callers)
    granted: list[list[int]] = [[] for _ in range(callers)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        rng = random.Random(k)
        try:
            barrier.wait(10)
            for b in range(30):
                c = claims([(rng.randint(100, 900), [(0, "all")]) for _ in range(4)])
                granted[k] += states[k].reserve([cap], c, NOW + b * 0.001).amount.tolist()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    flat = [g for gs in granted for g in gs if g > 0]
    held = states[0].usage(cap, "all", NOW + 1)
    assert held == (sum(flat), len(flat))
    assert sum(flat) <= 50_000 and len(flat) <= 150
    # Demand (8 x 30 x 4 x ~500) is far above the cap: it is used up (what is left cannot make a grant).
    assert 50_000 - sum(flat) < MIN or len(flat) == 150


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 700), st.sets(st.integers(0, 3), min_size=1), st.integers(0, 2)),
                min_size=1, max_size=25))
def test_redis_script_equals_python_reference(items: list[tuple[int, set[int], int]]) -> None:
    if not redis_available():
        pytest.skip("Redis not reachable on 6379")
    caps = [AMOUNT, COUNT, REFER, BOTH]
    s = Stores("redis", Path("/nonexistent"))
    try:
        c = claims([(a, [(j, f"v{v}") for j in sorted(js)]) for a, js, v in items])
        got = s.open().reserve(caps, c, NOW)
        ref = allocate(caps, c, [[0, 0] for _ in c.counters])
        assert got.amount.tolist() == ref.amount.tolist()
        assert [sorted(got.reached(i)) for i in range(len(c))] == [sorted(ref.reached(i)) for i in range(len(c))]
    finally:
        s.close()


def test_dead_redis_is_unavailable_not_a_hang() -> None:
    fs = FeatureSettings(online_store="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    state = RedisBackend(fs).exposure()
    with pytest.raises(OnlineStoreUnavailable):
        state.reserve([AMOUNT], claims([(10, [(0, "v")])]), NOW)


def test_unreadable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "exposure.db").mkdir()  # a directory where the file should be
    with pytest.raises(OnlineStoreUnavailable):
        SqliteBackend(FeatureSettings(data_dir=tmp_path)).exposure()


def _process_caller(where: tuple[str, str, str], k: int, barrier: Any, out: Any) -> None:
    """One caller process (as a front end's replica is): its own store connection, 20 batches."""
    kind, root, project = where
    fs = FeatureSettings(data_dir=Path(root), online_store=kind, project=project, timeout_s=5.0)
    state = RedisBackend(fs).exposure() if kind == "redis" else SqliteBackend(fs).exposure()
    rng = random.Random(100 + k)
    got: list[int] = []
    barrier.wait(60)
    for b in range(20):
        c = claims([(rng.randint(100, 900), [(0, "all")]) for _ in range(4)])
        got += state.reserve([PROCESS_CAP], c, NOW + b * 0.001).amount.tolist()
    state.close()
    out.put(got)


PROCESS_CAP = CapLimit("procs", 3600, max_amount=30_000, max_count=None, refer=False)


def test_caller_processes_never_overdraw_a_small_cap(stores: Stores) -> None:
    """4 processes, barrier-started: the exactness holds across processes, not only threads."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_process_caller, args=((stores.kind, str(stores.settings.data_dir),
                                                        stores.settings.project), k, barrier, out)) for k in range(4)]
    for p in procs:
        p.start()
    granted = [g for _ in procs for g in out.get(timeout=120) if g > 0]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    held = stores.open().usage(PROCESS_CAP, "all", NOW + 1)
    assert held == (sum(granted), len(granted))
    assert sum(granted) <= 30_000 and 30_000 - sum(granted) < MIN
