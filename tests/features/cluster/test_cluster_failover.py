"""A master of a 3-master cluster is killed while readers and velocity writers run.

The loops keep going: while the master's slots have no server, calls touching them fail
as ``OnlineStoreUnavailable`` (never anything else) within the configured deadline (never
a hang); once its replica has taken over, every call succeeds again and reads return what
they returned before the crash (the rows had reached the replica: ``WAIT``).
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from features import MATRIX_COLUMNS
from features.errors import FeatureError, OnlineStoreUnavailable
from features.materialize import materialize
from features.population.generate import merchant_ids
from features.stores import open_backend
from features.stores.redis.cluster import ClusterClient
from tests.conftest import AS_OF, _window
from tests.features.cluster.conftest import MERCHANTS, cluster_settings
from tests.features.redis_cluster import LocalCluster, poll, redis_command

TIMEOUT_S = 0.5
# A call lasts at most its deadline plus one attempt's connect/send: far below this.
BOUND_S = 4 * TIMEOUT_S


@pytest.fixture()
def fresh_cluster() -> Iterator[LocalCluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli are not installed: Redis Cluster tests skipped")
    c = LocalCluster.start(masters=3, replicas=1)
    try:
        yield c
    finally:
        c.stop()


@dataclass
class Loop:
    """Calls ``work`` until stopped, recording each outcome and how long it took."""

    work: Callable[[], None]
    outcomes: list[tuple[float, float, str]] = field(default_factory=list)  # (start, seconds, "ok" | error)
    stop: threading.Event = field(default_factory=threading.Event)
    unexpected: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.work()
                what = "ok"
            except FeatureError as exc:
                what = type(exc).__name__
                if not isinstance(exc, OnlineStoreUnavailable):
                    self.unexpected.append(exc)
            except BaseException as exc:
                self.unexpected.append(exc)
                return
            self.outcomes.append((t0, time.monotonic() - t0, what))

    def ok_since(self, t: float) -> int:
        return sum(1 for t0, _, w in list(self.outcomes) if t0 >= t and w == "ok")


@pytest.mark.parametrize("layout_", ["packed", "standard"])
def test_failover_under_load(fresh_cluster: LocalCluster, data: Path, tmp_path: Path, layout_: str) -> None:
    root = tmp_path / "world"
    for sub in ("raw", "offline"):
        shutil.copytree(data / sub, root / sub)
    settings = cluster_settings(root, fresh_cluster.url, f"fo{uuid.uuid4().hex[:6]}", layout_, cluster=True)
    settings = settings.model_copy(update={"timeout_s": TIMEOUT_S, "breaker_backoff_s": 0.1,
                                           "breaker_max_backoff_s": 0.5})
    from features.feast_repo import apply

    apply(settings)
    materialize(settings, *_window(AS_OF))
    for m in fresh_cluster.master_ports():  # every row is on the replicas too
        assert redis_command(m, "WAIT", "1", "5000").strip() == "1"
    backend = open_backend(settings)
    reader, velocity = backend.reader(), backend.velocity()
    ids = merchant_ids(0, MERCHANTS)[:200]
    expected = reader.read(ids)
    assert int(expected.found.sum()) > 150
    mismatches: list[int] = []
    steady = np.array([c not in ("apps_1h", "apps_24h") for c in MATRIX_COLUMNS])

    def read() -> None:
        got = reader.read(ids)
        # The velocity loop below counts applications: its columns move by design.
        if not np.array_equal(got.matrix[:, steady], expected.matrix[:, steady], equal_nan=True):
            mismatches.append(1)

    reads = Loop(read)
    counts = Loop(lambda: velocity.record(ids[:50]) and None)
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in (reads, counts)]
    for t in threads:
        t.start()
    try:
        start = time.monotonic()
        poll("the loops are running", lambda: reads.ok_since(start) >= 20 and counts.ok_since(start) >= 20)
        victim = fresh_cluster.master_ports()[0]
        heir = fresh_cluster.replica_of(victim)
        killed_at = time.monotonic()
        fresh_cluster.kill(victim)
        poll("the replica took over", lambda: heir in fresh_cluster.master_ports())
        fresh_cluster.wait_ok()
        healed = time.monotonic()
        settled = healed + BOUND_S  # calls begun before this may have met the old map
        poll("calls succeed after the failover",
             lambda: reads.ok_since(settled) >= 20 and counts.ok_since(settled) >= 20, timeout_s=30)
    finally:
        reads.stop.set()
        counts.stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a loop hung"
    assert reads.unexpected == [] and counts.unexpected == [], (reads.unexpected, counts.unexpected)
    for loop in (reads, counts):
        assert max(d for _, d, _ in loop.outcomes) < BOUND_S, "a call outlived its deadline"
        # After the heal, every call answers.
        late = [w for t0, _, w in loop.outcomes if t0 >= settled]
        assert late and all(w == "ok" for w in late), late[:5]
    assert mismatches == []  # the replica served exactly the rows the master had
    client = backend.client
    assert isinstance(client, ClusterClient) and client.refreshes >= 2
    errors = [w for t0, _, w in reads.outcomes + counts.outcomes if t0 >= killed_at]
    print(f"\n{layout_}: {len(reads.outcomes)} reads, {len(counts.outcomes)} velocity calls; "
          f"{len([e for e in errors if e != 'ok'])} errors after the kill, failover {healed - killed_at:.2f} s, "
          f"max call {max(d for _, d, _ in reads.outcomes + counts.outcomes):.3f} s")
