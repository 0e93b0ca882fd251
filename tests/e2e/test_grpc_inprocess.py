"""The API over a real gRPC channel into the real front end and engine, in one process (no Ray)."""

from __future__ import annotations

import threading

import grpc
import pytest

from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.frontend import FrontEnd
from services.scoring import DecisionBatch, RequestBatch
from tests.conftest import World
from tests.e2e import api_checks as c


def test_unary(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_unary(local_server[0])


def test_unknown_merchant_is_review_no_history(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_unknown_merchant(local_server[0])


def test_bad_inputs_are_invalid_argument_naming_the_field(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_bad_inputs(local_server[0])


def test_batch_with_bad_and_unknown_items(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_batch(local_server[0])


def test_stream_answers_every_request_in_order(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_stream(local_server[0])


def test_health_and_reflection(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_health_and_reflection(local_server[0])


def test_expired_deadline(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_deadline(local_server[0])


def test_idempotency(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_idempotency(local_server[0])


def test_late_request_is_refused_not_scored_late(world: World) -> None:
    """A deadline shorter than the backend's delay: DEADLINE_EXCEEDED, and the engine never decides it."""
    import asyncio

    from services.runtime import LocalBackend
    from services.scoring.factory import build_engine
    from tests.e2e.conftest import LoopThread, settings_for

    settings = settings_for(world)
    engine = build_engine(settings)

    engine_returned = threading.Event()

    class Slow(LocalBackend):
        """Hands the batch to the engine 0.3 s late, after the 0.1 s deadline."""

        async def score(self, batch: RequestBatch) -> DecisionBatch:
            await asyncio.sleep(0.3)
            try:
                return await super().score(batch)
            finally:
                engine_returned.set()

    lt = LoopThread()

    async def up() -> FrontEnd:
        fe = FrontEnd(Slow(engine), settings.serving, settings.security)
        await fe.start()
        return fe

    fe = lt.run(up())
    decided_before = engine._next_id
    with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as ch:
        stub = pb_grpc.CreditAuthorizationStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Authorize(c.request(1), timeout=0.1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert engine_returned.wait(10)  # the batch reached the engine after the deadline ...
    assert engine._next_id == decided_before  # ... and was not scored
    lt.run(fe.stop())
    lt.close()
