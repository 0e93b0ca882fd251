"""Fault tests' fixtures: a private redis-server (never the shared one on 6379), the test
world materialized into it, and engines whose Redis traffic goes through a ``FaultProxy``."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import AS_OF, World, _window
from tests.faults.proxy import FaultProxy, wait_until
from tests.faults.support import RedisWorld, free_port
from tests.support import redis_pings

REDIS_SERVER = shutil.which("redis-server")




@pytest.fixture(scope="session")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server of our own on a free loopback port (killed after, by its pid)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: fault tests need a real Redis")
    port = free_port()
    assert port != 6379
    work = tmp_path_factory.mktemp("fault_redis")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: redis_pings(port), f"redis-server on port {port}")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_world(world: World, redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> RedisWorld:
    """The session's world materialized into the private Redis."""
    from features.feast_repo import apply
    from features.materialize import materialize

    root = tmp_path_factory.mktemp("fault_world")
    for sub in ("raw", "offline", "models"):
        shutil.copytree(world.data_dir / sub, root / sub)
    rw = RedisWorld(world, root, f"faults{uuid.uuid4().hex[:8]}", redis_port)
    settings = rw.settings(redis_port, timeout_s=5.0)
    apply(settings)
    materialize(settings, *_window(AS_OF))
    return rw


@pytest.fixture
def proxy(redis_world: RedisWorld) -> Iterator[FaultProxy]:
    p = FaultProxy(redis_world.redis_port).start()
    yield p
    p.close()
