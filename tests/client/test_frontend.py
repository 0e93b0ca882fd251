"""The client against the real front end (in process, no Ray): sync and asyncio, unary,
batch and stream, and a refusal decoded from the server's own google.rpc details."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from creditauth_client import (
    AsyncAuthorizationClient,
    AuthorizationClient,
    authorize_request,
    error_details,
    item_error_details,
)
from creditauth_client.v1 import authorization_pb2 as pb

from services.frontend import FrontEnd

pytestmark = pytest.mark.e2e


def _req(currency: str = "CNY") -> pb.AuthorizeRequest:
    return authorize_request(f"client-{uuid.uuid4().hex[:16]}", "M00000001", 2_000_000, currency)


def test_sync_calls(front_end: FrontEnd) -> None:
    with AuthorizationClient(f"127.0.0.1:{front_end.port}", insecure=True) as c:
        one = c.authorize(_req())
        batch = c.authorize_batch([_req(), _req("XXX"), _req()])
        streamed = list(c.authorize_stream([_req(), _req()]))
        with pytest.raises(grpc.RpcError) as err:
            c.authorize(_req("XXX"))
    assert one.decision != pb.DECISION_UNSPECIFIED and one.decision_id
    assert [r.HasField("error") for r in batch.responses] == [False, True, False]
    assert batch.responses[1].error.field == "requests[1].requested_amount.currency"
    item = item_error_details(batch.responses[1].error)  # an item's details, as a refused call's
    assert (item.code, item.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert [v.field for v in item.field_violations] == ["requests[1].requested_amount.currency"]
    assert [r.decision != pb.DECISION_UNSPECIFIED for r in streamed] == [True, True]
    d = error_details(err.value)
    assert (d.code, d.reason, d.domain) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "creditauth.v1")
    assert [v.field for v in d.field_violations] == ["requested_amount.currency"]


def test_idempotent_retry_gets_the_same_decision(front_end: FrontEnd) -> None:
    req = _req()
    with AuthorizationClient(f"127.0.0.1:{front_end.port}", insecure=True) as c:
        first, again = c.authorize(req), c.authorize(req)
    assert first.decision_id == again.decision_id  # why retrying Authorize is safe


def test_async_calls(front_end: FrontEnd) -> None:
    async def run() -> tuple[pb.AuthorizeResponse, list[pb.AuthorizeResponse], grpc.aio.AioRpcError]:
        async with AsyncAuthorizationClient(f"127.0.0.1:{front_end.port}", insecure=True) as c:
            one = await c.authorize(_req())
            streamed = [r async for r in c.authorize_stream([_req(), _req("XXX"), _req()])]
            try:
                await c.authorize(_req("XXX"))
            except grpc.aio.AioRpcError as err:
                return one, streamed, err
        raise AssertionError("INVALID_ARGUMENT expected")

    one, streamed, err = asyncio.run(run())
    assert one.decision != pb.DECISION_UNSPECIFIED
    assert [r.HasField("error") for r in streamed] == [False, True, False]
    assert item_error_details(streamed[1].error).reason == "INVALID_FIELD"
    assert [v.field for v in error_details(err).field_violations] == ["requested_amount.currency"]
