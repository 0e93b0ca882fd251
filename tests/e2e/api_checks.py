"""Assertions shared by the end-to-end tests of every topology (in-process, Ray, Redis)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc

RUN = uuid.uuid4().hex[:8]
_seq = itertools.count()


def fresh_id() -> str:
    """A new application id: the test world keeps an idempotency store across tests."""
    return f"e2e-{RUN}-{next(_seq)}"


def request(i: int, merchant: str = "M00000001", **over: object) -> pb.AuthorizeRequest:
    req = pb.AuthorizeRequest(
        application_id=fresh_id(),
        merchant_id=merchant,
        term_months=12,
        product=pb.PRODUCT_WORKING_CAPITAL,
        channel=pb.CHANNEL_POS_TERMINAL,
    )
    req.requested_amount.amount_minor = 2_000_000
    req.requested_amount.currency = "CNY"
    for k, v in over.items():
        if k == "amount":
            req.requested_amount.amount_minor = v
        elif k == "currency":
            req.requested_amount.currency = v
        else:
            setattr(req, k, v)
    return req


def check_decision(r: pb.AuthorizeResponse, app_id: str) -> None:
    assert r.application_id == app_id
    assert not r.HasField("error")
    assert r.decision in (pb.DECISION_APPROVE, pb.DECISION_DECLINE, pb.DECISION_REVIEW)
    assert r.decision_id
    assert r.model_version.startswith("lgbm-") and r.policy_version
    assert 0.0 <= r.probability_of_default <= 1.0
    assert r.risk_grade in ("A", "B", "C", "D", "E")
    if r.decision == pb.DECISION_DECLINE:
        assert r.approved_limit.amount_minor == 0
    else:
        assert 0 <= r.approved_limit.amount_minor <= 2_000_000
    assert r.approved_limit.currency == "CNY"
    contribs = [c.contribution for c in r.reasons if c.code.startswith("R_")]
    assert contribs == sorted(contribs, reverse=True)


def check_unary(channel: grpc.Channel) -> None:
    stub = pb_grpc.CreditAuthorizationStub(channel)
    for i, m in enumerate(["M00000001", "M00000002", "M00001000"]):
        req = request(i, m)
        check_decision(stub.Authorize(req, timeout=30), req.application_id)


def check_unknown_merchant(channel: grpc.Channel) -> None:
    stub = pb_grpc.CreditAuthorizationStub(channel)
    r = stub.Authorize(request(7, "NEVER-SEEN-1"), timeout=30)
    assert r.decision == pb.DECISION_REVIEW
    assert r.reasons[0].code == "NO_HISTORY"
    assert r.approved_limit.amount_minor == 0


BAD: list[tuple[dict[str, Any], str]] = [
    ({"merchant_id": ""}, "merchant_id"),
    ({"application_id": ""}, "application_id"),
    ({"amount": -100}, "requested_amount.amount_minor"),
    ({"amount": 10**15}, "requested_amount.amount_minor"),
    ({"currency": "ZZZ"}, "requested_amount.currency"),
    ({"term_months": 0}, "term_months"),
    ({"product": pb.PRODUCT_UNSPECIFIED}, "product"),
]


def check_bad_inputs(channel: grpc.Channel) -> None:
    stub = pb_grpc.CreditAuthorizationStub(channel)
    for over, field in BAD:
        with pytest.raises(grpc.RpcError) as info:
            stub.Authorize(request(1, **over), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, over
        assert (info.value.details() or "").startswith(field + ":"), info.value.details()
    # A request with no fields at all.
    with pytest.raises(grpc.RpcError) as info:
        stub.Authorize(pb.AuthorizeRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def check_batch(channel: grpc.Channel) -> None:
    stub = pb_grpc.CreditAuthorizationStub(channel)
    reqs = [request(i, f"M{i:08d}") for i in range(40)]
    reqs[5] = request(5, currency="BAD")
    reqs[17] = request(17, "UNKNOWN-17")
    out = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=reqs), timeout=60)
    assert len(out.responses) == 40
    for i, r in enumerate(out.responses):
        assert r.application_id == reqs[i].application_id
        if i == 5:
            assert r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert r.error.field == "requests[5].requested_amount.currency"
        elif i == 17:
            assert r.decision == pb.DECISION_REVIEW and r.reasons[0].code == "NO_HISTORY"
        else:
            check_decision(r, reqs[i].application_id)
    empty = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(), timeout=30)
    assert len(empty.responses) == 0


def check_stream(channel: grpc.Channel, n: int = 600) -> None:
    stub = pb_grpc.CreditAuthorizationStub(channel)

    reqs = [request(i, f"M{i % 2000:08d}") if i != 3 else request(i, amount=0) for i in range(n)]
    answers = list(stub.AuthorizeStream(iter(reqs), timeout=120))
    assert [a.application_id for a in answers] == [r.application_id for r in reqs]
    assert answers[3].error.field == "requested_amount.amount_minor"
    assert sum(1 for a in answers if a.HasField("error")) == 1


def check_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "creditauth.v1.CreditAuthorization"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"creditauth.v1.CreditAuthorization", "grpc.health.v1.Health"} <= names


def check_deadline(channel: grpc.Channel) -> None:
    stub = pb_grpc.CreditAuthorizationStub(channel)
    # gRPC keeps deadlines in whole milliseconds (rounded up), so a 1 us timeout
    # is a budget of up to ~1 ms on the wire, and a fast server may answer inside
    # it (rightly: the budget was not gone). Whichever way it goes, an expired
    # call ends as DEADLINE_EXCEEDED and never as another error.
    codes = []
    for _ in range(10):
        try:
            stub.Authorize(request(1), timeout=0.000001)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    # A budget far below the work: 500 decisions take tens of milliseconds here.
    # (A budget shorter than the work queued ahead is refused at once, also with
    # DEADLINE_EXCEEDED: it would expire waiting.)
    reqs = [request(i, f"M{i % 200:08d}") for i in range(500)]
    with pytest.raises(grpc.RpcError) as info:
        stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=reqs), timeout=0.002)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def check_idempotency(channel: grpc.Channel) -> None:
    stub = pb_grpc.CreditAuthorizationStub(channel)
    req = request(1, "M00000033")
    first = stub.Authorize(req, timeout=30)
    again = stub.Authorize(req, timeout=30)
    assert again.decision_id == first.decision_id and again.decision == first.decision
    changed = pb.AuthorizeRequest()
    changed.CopyFrom(req)
    changed.requested_amount.amount_minor += 1
    with pytest.raises(grpc.RpcError) as info:
        stub.Authorize(changed, timeout=30)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
