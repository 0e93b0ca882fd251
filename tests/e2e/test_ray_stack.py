"""End to end through a real gRPC channel into real Ray Serve replicas on a local Ray cluster.

One local cluster serves the module; the SQLite world and (where Redis is up)
the Redis world each get their own Serve application.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import psutil
import pytest

from services.stack import Stack
from tests.conftest import World
from tests.e2e import api_checks as c
from tests.e2e.conftest import LoopThread, ray_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(ray_cluster: LoopThread) -> LoopThread:
    return ray_cluster


def _stack(lt: LoopThread, world: World, app: str) -> Iterator[grpc.Channel]:
    stack = Stack(ray_settings(world, app))
    lt.run(stack.__aenter__())
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}")
    yield channel
    channel.close()
    lt.run(stack.__aexit__(None, None, None))


@pytest.fixture(scope="module")
def sqlite_stack(cluster: LoopThread, world: World) -> Iterator[grpc.Channel]:
    yield from _stack(cluster, world, "creditauth_sqlite")


@pytest.fixture(scope="module")
def redis_stack(cluster: LoopThread, redis_world: World) -> Iterator[grpc.Channel]:
    yield from _stack(cluster, redis_world, "creditauth_redis")


def test_sqlite_all_rpcs(sqlite_stack: grpc.Channel) -> None:
    c.check_unary(sqlite_stack)
    c.check_unknown_merchant(sqlite_stack)
    c.check_batch(sqlite_stack)
    c.check_stream(sqlite_stack)


def test_replicas_run_at_the_configured_niceness(sqlite_stack: grpc.Channel, world: World) -> None:
    """Ray starts workers at nice 15; the cluster this process started runs its scoring
    replicas at ``ray.worker_niceness`` (0), so they do not yield their core to the raylet,
    Ray's agents or the front end."""
    c.check_unary(sqlite_stack)  # the replica is up and has answered
    replicas = [p for p in psutil.process_iter(["cmdline"])
                if any("ServeReplica:creditauth_sqlite" in part for part in p.info["cmdline"] or [])]
    assert replicas, "no Serve replica process of the app found"
    want = ray_settings(world, "creditauth_sqlite").ray.worker_niceness
    assert {p.nice() for p in replicas} == {want}


def test_sqlite_bad_inputs_health_reflection_deadline(sqlite_stack: grpc.Channel) -> None:
    c.check_bad_inputs(sqlite_stack)
    c.check_health_and_reflection(sqlite_stack)
    c.check_deadline(sqlite_stack)
    c.check_idempotency(sqlite_stack)


def test_redis_all_rpcs(redis_stack: grpc.Channel) -> None:
    c.check_unary(redis_stack)
    c.check_unknown_merchant(redis_stack)
    c.check_batch(redis_stack)
    c.check_stream(redis_stack)
