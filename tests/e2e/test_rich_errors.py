"""Refusals carry machine-readable details (google.rpc.Status in the trailer), read as a
caller's code would: a field violation naming the field, a stable reason, when to retry."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.frontend import FrontEnd
from services.frontend.details import TRAILER, trailer
from services.schema.codes import Code
from tests.e2e.api_checks import request

pytestmark = pytest.mark.e2e


def _unpacked(details: Iterable[any_pb2.Any]) -> dict[str, object]:
    """The google.rpc details by message name."""
    out: dict[str, object] = {}
    for d in details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if d.Is(kind.DESCRIPTOR):
                msg = kind()
                d.Unpack(msg)
                out[kind.__name__] = msg
    return out


def _details(err: grpc.RpcError) -> dict[str, object]:
    raw = dict(err.trailing_metadata() or ())[TRAILER]  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(raw)
    return {"code": status.code, **_unpacked(status.details)}


def test_invalid_field_is_a_field_violation(local_server: tuple[grpc.Channel, object]) -> None:
    channel, _ = local_server
    stub = pb_grpc.CreditAuthorizationStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Authorize(request(0, currency="XXX"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    d = _details(err.value)
    assert d["code"] == Code.INVALID_ARGUMENT
    bad = d["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["requested_amount.currency"]
    info = d["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_FIELD", "creditauth.v1")
    assert "RetryInfo" not in d  # a bad request is not retried


def test_batch_item_errors_carry_the_same_details(local_server: tuple[grpc.Channel, object]) -> None:
    channel, _ = local_server
    stub = pb_grpc.CreditAuthorizationStub(channel)
    reqs = [request(0), request(1, currency="XXX"), request(2)]
    answer = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=reqs), timeout=30)
    good, bad = [r for i, r in enumerate(answer.responses) if i != 1], answer.responses[1]
    assert all(not r.HasField("error") and not r.error.details for r in good)
    assert bad.error.code == Code.INVALID_ARGUMENT
    d = _unpacked(bad.error.details)
    violations = d["BadRequest"].field_violations  # type: ignore[attr-defined]
    assert [v.field for v in violations] == ["requests[1].requested_amount.currency"] == [bad.error.field]
    assert violations[0].description == bad.error.message
    assert (d["ErrorInfo"].reason, d["ErrorInfo"].domain) == ("INVALID_FIELD", "creditauth.v1")  # type: ignore[attr-defined]
    assert "RetryInfo" not in d


def test_malformed_batch_names_no_field_but_a_reason(local_server: tuple[grpc.Channel, object]) -> None:
    channel, _ = local_server
    raw = channel.unary_unary("/creditauth.v1.CreditAuthorization/AuthorizeBatch")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\x0a\xff\xff\xff", timeout=30)
    d = _details(err.value)
    assert d["code"] == Code.INVALID_ARGUMENT and "BadRequest" not in d
    assert pb.AuthorizeBatchResponse  # the proto module is the caller's


def test_overload_and_outage_say_when_to_retry() -> None:
    for code, seconds in ((Code.RESOURCE_EXHAUSTED, 0.25), (Code.UNAVAILABLE, 1.0)):
        status = status_pb2.Status.FromString(dict(trailer(code, "busy"))[TRAILER])
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        info = error_details_pb2.RetryInfo()
        retry[0].Unpack(info)
        assert info.retry_delay.ToTimedelta().total_seconds() == seconds


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *argv], capture_output=True, text=True,
                          timeout=120)


def test_cli_authorize_and_health(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    _, fe = local_server
    target = f"127.0.0.1:{fe.port}"
    ok = _cli("authorize", "--target", target, "--merchant", "M00000001", "--amount", "2000000")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["decision"].startswith("DECISION_")
    bad = _cli("authorize", "--target", target, "--merchant", "M00000001", "--amount", "0")
    assert bad.returncode == 1
    refusal = json.loads(bad.stderr)
    assert refusal["code"] == "INVALID_ARGUMENT" and "requested_amount.amount_minor" in refusal["message"]
    assert any("fieldViolations" in d for d in refusal["details"])
    unknown = _cli("authorize", "--target", target, "--merchant", "M1", "--amount", "5", "--product", "YACHT")
    assert unknown.returncode != 0 and "--product: unknown 'YACHT'" in unknown.stderr
    health = _cli("health", "--target", target)
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"
