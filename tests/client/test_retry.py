"""Retries against a real gRPC server that answers from a script: UNAVAILABLE and
RESOURCE_EXHAUSTED retried after the RetryInfo delay, INVALID_ARGUMENT never, attempts
bounded by the policy and the deadline, and never multiplied by gRPC's own retries."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from creditauth_client import (
    AsyncAuthorizationClient,
    AuthorizationClient,
    RetryPolicy,
    Timeouts,
    authorize_request,
    error_details,
    service_config,
)
from creditauth_client.v1 import authorization_pb2 as pb

from tests.client.scripted import OK, Outcome, ScriptedServer

UNAVAILABLE, EXHAUSTED, INVALID = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   grpc.StatusCode.INVALID_ARGUMENT)
KINDS = ["sync", "async"]


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[ScriptedServer] = []

    def start(*script: Outcome, **kw: Any) -> ScriptedServer:
        started.append(ScriptedServer(list(script), **kw).start())
        return started[-1]

    yield start
    for s in started:
        s.stop()


def call(kind: str, target: str, *, timeout: float | None = None, **client: Any) -> pb.AuthorizeResponse:
    """One Authorize through the sync or the asyncio client."""
    request = authorize_request("app-1", "M00000001", 2_000_000, "CNY")
    if kind == "sync":
        with AuthorizationClient(target, insecure=True, **client) as c:
            return c.authorize(request, timeout=timeout)

    async def run() -> pb.AuthorizeResponse:
        async with AsyncAuthorizationClient(target, insecure=True, **client) as c:
            return await c.authorize(request, timeout=timeout)

    return asyncio.run(run())


@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_is_retried_after_the_servers_delay(kind: str, serve: Any) -> None:
    server = serve(Outcome(UNAVAILABLE, retry_after=0.2), Outcome(UNAVAILABLE, retry_after=0.2), OK)
    answer = call(kind, server.target)
    assert answer.decision_id == "d3" and answer.application_id == "app-1"
    assert len(server.seen) == 3
    assert all(gap >= 0.2 for gap in server.gaps()), server.gaps()


@pytest.mark.parametrize("kind", KINDS)
def test_resource_exhausted_honours_the_real_servers_retry_info(kind: str, serve: Any) -> None:
    from services.frontend.details import RETRY_AFTER_S, trailer
    from services.schema.codes import Code

    def real(o: Outcome) -> Any:
        assert o.code is not None
        return trailer(o.code.value[0], "shed")

    server = serve(Outcome(EXHAUSTED), OK, trailer=real)
    assert call(kind, server.target).decision_id == "d2"
    assert len(server.seen) == 2
    assert server.gaps()[0] >= RETRY_AFTER_S[Code.RESOURCE_EXHAUSTED]


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_argument_is_never_retried(kind: str, serve: Any) -> None:
    server = serve(Outcome(INVALID, field="requested_amount.currency", reason="INVALID_FIELD"), OK)
    with pytest.raises(grpc.RpcError) as err:
        call(kind, server.target)
    assert len(server.seen) == 1
    d = error_details(err.value)
    assert d.code == INVALID and d.reason == "INVALID_FIELD" and d.retry_delay is None
    assert [v.field for v in d.field_violations] == ["requested_amount.currency"]


@pytest.mark.parametrize("kind", KINDS)
def test_attempts_are_bounded_and_not_multiplied(kind: str, serve: Any) -> None:
    server = serve(Outcome(UNAVAILABLE, retry_after=0.01))
    with pytest.raises(grpc.RpcError) as err:
        call(kind, server.target, retry=RetryPolicy(max_attempts=3))
    assert error_details(err.value).code == UNAVAILABLE
    assert len(server.seen) == 3  # not 3 x gRPC's own attempts


@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_without_retry_info_backs_off(kind: str, serve: Any) -> None:
    server = serve(Outcome(UNAVAILABLE), Outcome(UNAVAILABLE), OK)
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.2)
    assert call(kind, server.target, retry=policy).decision_id == "d3"
    gaps = server.gaps()
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05, gaps  # at least half the growing cap


@pytest.mark.parametrize("kind", KINDS)
def test_resource_exhausted_without_retry_info_is_not_retried(kind: str, serve: Any) -> None:
    server = serve(Outcome(EXHAUSTED), OK)
    with pytest.raises(grpc.RpcError):
        call(kind, server.target)
    assert len(server.seen) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_delay_beyond_the_deadline_fails_at_once_with_the_servers_error(kind: str, serve: Any) -> None:
    server = serve(Outcome(EXHAUSTED, retry_after=5.0), OK)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call(kind, server.target, timeout=1.0)
    assert time.monotonic() - start < 1.0
    d = error_details(err.value)
    assert d.code == EXHAUSTED and d.retry_delay == 5.0
    assert len(server.seen) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_deadline_covers_every_attempt(kind: str, serve: Any) -> None:
    server = serve(Outcome(UNAVAILABLE, retry_after=0.3), Outcome(hang=True))
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call(kind, server.target, timeout=1.0)
    elapsed = time.monotonic() - start
    assert error_details(err.value).code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(server.seen) == 2 and elapsed < 1.5
    second = server.seen[1].time_remaining
    assert second is not None and second <= 0.75  # what was left of the one deadline, not a fresh one


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("retry", [RetryPolicy(), None])
def test_default_deadline_applies(kind: str, retry: RetryPolicy | None, serve: Any) -> None:
    server = serve(Outcome(hang=True))
    with pytest.raises(grpc.RpcError) as err:
        call(kind, server.target, timeouts=Timeouts(authorize=0.3), retry=retry)
    assert error_details(err.value).code == grpc.StatusCode.DEADLINE_EXCEEDED
    seen = server.seen[0].time_remaining
    # The wire rounds a deadline up (grpc-timeout units); 0.3 s shows as up to ~0.301 s.
    assert seen is not None and seen <= 0.35  # the 0.3 s default, not the 5 s one nor none


@pytest.mark.parametrize("kind", KINDS)
def test_no_policy_means_one_attempt(kind: str, serve: Any) -> None:
    server = serve(Outcome(UNAVAILABLE, retry_after=0.01), OK)
    with pytest.raises(grpc.RpcError):
        call(kind, server.target, retry=None)
    assert len(server.seen) == 1


def test_the_stream_is_retried_by_the_service_config_only_before_it_starts(serve: Any) -> None:
    server = serve(Outcome(UNAVAILABLE))
    requests = [authorize_request(f"s{i}", "M00000001", 1000, "CNY") for i in range(3)]
    with AuthorizationClient(server.target, insecure=True, retry=RetryPolicy(max_attempts=3)) as c, \
            pytest.raises(grpc.RpcError) as err:
        list(c.authorize_stream(requests, timeout=10))
    assert error_details(err.value).code == UNAVAILABLE
    assert [s.method for s in server.seen] == ["AuthorizeStream"] * 3
    server2 = serve(Outcome(UNAVAILABLE), OK)
    with AuthorizationClient(server2.target, insecure=True) as c:
        answers = list(c.authorize_stream(requests, timeout=10))
    assert [a.application_id for a in answers] == ["s0", "s1", "s2"] and len(server2.seen) == 2


def test_async_stream_answers_in_order(serve: Any) -> None:
    server = serve(OK)
    requests = [authorize_request(f"a{i}", "M00000001", 1000, "CNY") for i in range(4)]

    async def run() -> list[str]:
        async with AsyncAuthorizationClient(server.target, insecure=True) as c:
            return [a.application_id async for a in c.authorize_stream(requests, timeout=10)]

    assert asyncio.run(run()) == ["a0", "a1", "a2", "a3"]


def test_service_config_leaves_unary_retries_to_the_interceptor() -> None:
    config = json.loads(service_config(RetryPolicy(max_attempts=7)))
    names = [n for m in config["methodConfig"] for n in m["name"]]
    assert names == [{"service": "creditauth.v1.CreditAuthorization", "method": "AuthorizeStream"}]
    stream = config["methodConfig"][0]
    assert stream["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert stream["retryPolicy"]["maxAttempts"] == 5 and "timeout" not in stream
    assert "retryPolicy" not in json.loads(service_config(None))["methodConfig"][0]


def test_policy_decisions() -> None:
    low = RetryPolicy(max_attempts=3)

    def lowest(a: float, b: float) -> float:
        return a

    assert low.delay(UNAVAILABLE, 0.5, 1, None, lowest) == 0.5
    assert low.delay(EXHAUSTED, 0.5, 2, 10.0, lowest) == 0.5
    assert low.delay(EXHAUSTED, 0.5, 3, 10.0, lowest) is None  # attempts spent
    assert low.delay(EXHAUSTED, None, 1, None, lowest) is None
    assert low.delay(INVALID, 0.5, 1, None, lowest) is None
    assert low.delay(UNAVAILABLE, 0.5, 1, 0.4, lowest) is None  # would outlast the deadline
    assert low.delay(UNAVAILABLE, 60.0, 1, None, lowest) is None  # beyond max_server_delay
    assert low.delay(UNAVAILABLE, None, 2, None, lowest) == pytest.approx(0.1)  # half of the 0.2 cap
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
