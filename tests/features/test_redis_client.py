"""One Redis client per process: the pooled RESP client and the parts of a backend on it.

Most tests run against a private ``redis-server`` this module starts on a loopback port
(with a password and a non-zero database, so AUTH and SELECT are exercised on every
connection): there a test may flush the script cache and count connections without
touching the shared server. The idempotency contract is also checked on the shared one.
"""

from __future__ import annotations

import ast
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from features import FeatureSettings, OnlineStoreUnavailable
from features.errors import FeatureConfigError, FeatureDataError
from features.stores.redis import RedisBackend, _resp, _resp_build
from features.stores.redis import admin as redis_admin
from features.stores.redis.client import RedisClient
from tests.conftest import World, requires_redis
from tests.support import throwaway_redis

TAG_BYTES = 136
PASSWORD = "s3cret-test"
REPO = Path(__file__).resolve().parents[2]




@pytest.fixture(scope="module")
def private_url() -> Iterator[str]:
    """A throwaway redis-server (no persistence), up until the module's tests are done."""
    with throwaway_redis("--requirepass", PASSWORD) as port:
        yield f"redis://:{PASSWORD}@127.0.0.1:{port}/2"


def _settings(url: str, **kw: object) -> FeatureSettings:
    return FeatureSettings(online_store="redis", redis_url=url, project=f"cli{uuid.uuid4().hex[:8]}", **kw)  # type: ignore[arg-type]


def _named_connections(url: str, name: str) -> int:
    """Connections named ``name`` in CLIENT LIST, asked over a client of its own."""
    counter = RedisClient(FeatureSettings(redis_url=url), max_connections=1, name="counter")
    listing = counter.command(b"CLIENT", b"LIST")
    counter.close()
    assert isinstance(listing, bytes)
    fields = (dict(f.split("=", 1) for f in line.split(" ") if "=" in f) for line in listing.decode().splitlines())
    return sum(f.get("name") == name for f in fields)


def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Wait for server-side state (the server sees a closed socket on its next event loop turn)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
    return True


def test_backend_parts_on_two_threads_open_at_most_two_connections(private_url: str) -> None:
    backend = RedisBackend(_settings(private_url))
    reader = backend.reader(TAG_BYTES)
    velocity = backend.velocity()
    idem = backend.idempotency(window_s=60)

    def work(tag: str) -> None:
        for i in range(30):
            reader.read([f"M{i:08d}", "UNKNOWN"])
            velocity.record([f"V-{tag}-{i % 3}"])
            app = f"{tag}-{i}"
            assert idem.save([app], [b"rec"]) == {}
            assert idem.lookup([app]) == {app: b"rec"}

    # Force a second connection: one caller holds one while the other works.
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with backend.client.connection() as conn:
            conn.call(_resp_build.encode_command([b"PING"]), _resp.ReplyCollector(1))  # connected, named
            held.set()
            done.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    work("solo")  # the pool's only connection is taken: this opens the second
    done.set()
    holder.join()
    # Now both threads at once, released together, as a replica's scoring threads are.
    gate = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(tag: str) -> None:
        try:
            gate.wait(10)
            work(tag)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert backend.client.connections == 2
    assert _named_connections(private_url, backend.client.name) == 2
    backend.drop_project()
    reader.close()
    # close() really closes the sockets: the server drops them from its list.
    assert _until(lambda: _named_connections(private_url, backend.client.name) == 0)


def test_pool_is_bounded_and_a_busy_pool_is_a_timely_error(private_url: str) -> None:
    client = RedisClient(_settings(private_url, timeout_s=0.2), max_connections=1)
    with client.connection():
        with pytest.raises(OnlineStoreUnavailable, match="busy"):
            client.command(b"PING")
        # A caller that waits longer gets the connection as soon as it is given back.
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(client.command(b"PING", timeout_s=30)))
        waiter.start()
    waiter.join()
    assert got == [b"PONG"] and client.connections == 1
    client.close()


def test_scripts_reload_after_the_servers_cache_is_flushed(private_url: str) -> None:
    s = _settings(private_url)
    backend = RedisBackend(s)
    idem = backend.idempotency(window_s=60)
    velocity = backend.velocity()

    def loads() -> int:
        stats = redis_admin.info(backend.client, "commandstats")
        line = stats.get("cmdstat_script|load", "calls=0,")
        return int(line.split("calls=", 1)[1].split(",", 1)[0])

    backend.client.command(b"SCRIPT", b"FLUSH")  # a private server: nobody else's scripts go
    before = loads()
    assert idem.save(["a"], [b"1"]) == {}
    assert velocity.record(["M1"]).apps_1h.tolist() == [1]
    assert loads() == before + 2  # unknown to the server: NOSCRIPT, then SCRIPT LOAD, once each
    backend.client.command(b"SCRIPT", b"FLUSH")
    assert idem.save(["a", "b"], [b"2", b"2"]) == {"a": b"1"}
    assert velocity.record(["M1"]).apps_1h.tolist() == [2]
    assert loads() == before + 4
    assert idem.save(["c"], [b"3"]) == {}  # loaded again: no further SCRIPT LOAD
    assert loads() == before + 4
    backend.drop_project()


def test_admin_reports_the_server_and_drops_only_the_project(private_url: str) -> None:
    s = _settings(private_url)
    backend, neighbour = RedisBackend(s), RedisBackend(_settings(private_url))
    backend.velocity().record(["M1", "M2"])
    backend.idempotency(window_s=60).put_reasons("p1", (("A", "a"),))
    neighbour.velocity().record(["M1"])
    neighbour.idempotency(window_s=60).put_reasons("p1", (("B", "b"),))
    assert backend.server_cpu_s() > 0 and backend.server_memory_bytes() > 0
    backend.drop_project()
    assert backend.idempotency(window_s=60).reasons("p1") is None
    assert backend.velocity().record(["M1"]).apps_1h.tolist() == [1]  # its state went: counting afresh
    assert neighbour.idempotency(window_s=60).reasons("p1") == (("B", "b"),)
    assert neighbour.velocity().record(["M1"]).apps_1h.tolist() == [2]
    backend.drop_project()
    neighbour.drop_project()


def test_wrong_password_is_a_config_error(private_url: str) -> None:
    wrong = private_url.replace(PASSWORD, "nope")
    with pytest.raises(FeatureConfigError):
        RedisBackend(_settings(wrong)).idempotency(window_s=60).lookup(["x"])


def test_a_refused_command_is_a_data_error(private_url: str) -> None:
    s = _settings(private_url)
    backend = RedisBackend(s)
    key = f"{s.project}:idem:reasons:p1".encode()
    backend.client.command(b"HSET", key, b"f", b"v")  # a hash where a reason table (a string) belongs
    with pytest.raises(FeatureDataError, match="WRONGTYPE"):
        backend.idempotency(window_s=60).reasons("p1")
    assert backend.client.command(b"PING") == b"PONG"  # the connection survives an error reply
    backend.drop_project()


@requires_redis
def test_idempotency_first_writer_wins_on_the_shared_server() -> None:
    s = FeatureSettings(online_store="redis", project=f"idem{uuid.uuid4().hex[:8]}")
    backend = RedisBackend(s)
    store = backend.idempotency(window_s=30, namespace="v1")
    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    assert store.lookup([]) == {} and store.save([], []) == {}
    assert store.save([a, b], [b"one", b"\x00\xffbinary"]) == {}
    assert store.save([a, "fresh"], [b"two", b"three"]) == {a: b"one"}  # a was decided: its record comes back
    assert store.lookup([a, b, "fresh", "absent"]) == {a: b"one", b: b"\x00\xffbinary", "fresh": b"three"}
    # Another namespace (record schema) never sees these records.
    assert backend.idempotency(window_s=30, namespace="v2").lookup([a]) == {}
    assert store.reasons("p9") is None
    store.put_reasons("p9", (("R1", "too fast"), ("R2", "é ünïcode")))
    again = backend.idempotency(window_s=30, namespace="v1")
    assert again.reasons("p9") == (("R1", "too fast"), ("R2", "é ünïcode"))
    backend.drop_project()
    assert store.lookup([a]) == {}
    store.close()


def test_no_runtime_module_imports_redis_py() -> None:
    """redis-py is a reference for benchmarks only: the runtime talks to Redis through ``RedisClient``."""
    allowed = {"features/stores/redis/bench.py"}
    offenders = []
    for path in sorted((REPO / "features").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "redis" or n.startswith("redis.") for n in names) and rel not in allowed:
                offenders.append(rel)
    assert offenders == []


@requires_redis
def test_client_benchmark_runs_both_clients_and_cleans_up(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m features.bench clients`` on the small world: both clients read the same
    batches (the mode checks that before timing), every case is timed, nothing is left behind."""
    from features.bench import main

    shutil.copytree(world.data_dir / "offline", tmp_path / "offline")
    before = _shared_keys_matching(b"*cabench*")
    assert main(["clients", "--merchants", "3000", "--seconds", "0", "--sizes", "1,10",
                 "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for case in ("read 1", "read 10", "velocity 1", "velocity 100", "idem lookup 100", "idem save 100"):
        timed = [line.split()[len(case.split())] for line in lines if line.startswith(case + " ")]
        assert timed == ["ours", "redis-py"], case
    assert "_HiredisParser" in out
    assert _shared_keys_matching(b"*cabench*") <= before  # its feature hashes and records are gone


def _shared_keys_matching(pattern: bytes) -> set[bytes]:
    import redis

    client = redis.Redis()  # an independent client, as a reference
    try:
        return set(client.scan_iter(match=pattern, count=10_000))
    finally:
        client.close()
