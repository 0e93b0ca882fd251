"""Servers for end-to-end tests, each on its own event-loop thread; clients use real channels."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
import pytest

from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.frontend import FrontEnd
from services.runtime import LocalBackend
from services.scoring.factory import build_engine
from services.settings import Settings, load_settings
from services.telemetry import NullTelemetry
from tests.conftest import World


class LoopThread:
    """An asyncio loop on a daemon thread, to host grpc.aio servers beside sync test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 180) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def settings_for(world: World, **serving: object) -> Settings:
    from tests.conftest import feature_settings

    fs = feature_settings(world)
    return load_settings(
        None,
        {
            "features": fs.model_dump(),
            "serving": {"host": "127.0.0.1", "port": 0, **serving},
            # Loopback only: the security tests (tests/services/test_auth*.py) run the locked doors.
            "security": {"plaintext": True, "anonymous": {"name": "anonymous"}},
        },
    )


def start_local(
    world: World, telemetry: NullTelemetry | None = None, **serving: object
) -> tuple[LoopThread, FrontEnd]:
    """The real front end over the real engine in process (no Ray); with ``telemetry``, both
    sides record into it (so a test's exporter sees the front end's and the replica's spans)."""
    settings = settings_for(world, **serving)
    engine = build_engine(settings, telemetry=telemetry)
    lt = LoopThread()

    async def up() -> FrontEnd:
        fe = FrontEnd(LocalBackend(engine), settings.serving, settings.security, telemetry)
        await fe.start()
        return fe

    return lt, lt.run(up())


@pytest.fixture(scope="module")
def local_server(world: World) -> Iterator[tuple[grpc.Channel, FrontEnd]]:
    lt, fe = start_local(world)
    channel = grpc.insecure_channel(f"127.0.0.1:{fe.port}")
    yield channel, fe
    channel.close()
    lt.run(fe.stop())
    lt.close()


StubFactory = Callable[[grpc.Channel], pb_grpc.CreditAuthorizationStub]


@pytest.fixture(scope="session")
def ray_cluster(world: World) -> Iterator[LoopThread]:
    """One local Ray cluster for every Ray end-to-end test; each test module deploys its own app."""
    from services.runtime import seam

    lt = LoopThread()
    settings = settings_for(world)
    seam.start_cluster(settings.model_copy(update={"ray": settings.ray.model_copy(update={"num_cpus": 2})}))
    yield lt
    seam.shutdown()
    lt.close()


def ray_settings(world: World, app: str, **ray: object) -> Settings:
    """Settings for an app on the shared cluster; ``ray`` keys are validated like a settings file."""
    doc = settings_for(world).model_dump()
    doc["ray"] = {**doc["ray"], "app_name": app, **ray}
    return Settings.model_validate(doc)
