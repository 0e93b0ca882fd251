"""Machine-readable error details (``google.rpc``) on every refused call.

A caller's code should not parse message text: each refusal carries a ``google.rpc.Status``
in the ``grpc-status-details-bin`` trailer (what grpcio-status's ``rpc_status.from_call``
and grpcurl read) with an ``ErrorInfo`` (a stable reason and the domain), a ``BadRequest``
naming the field for ``INVALID_ARGUMENT`` and ``PERMISSION_DENIED`` on a request field, and a
``RetryInfo`` saying when to retry ``RESOURCE_EXHAUSTED`` and ``UNAVAILABLE``.

An item of a batch or stream that is answered with an error carries the same details in
``ItemError.details``: the per-code part is serialized once per process
(``code_details``) and copied by the C encoder; an item's ``BadRequest`` is serialized
when the item is refused (``item_details``), which is rare and off the decision path.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from creditauth.v1 import authorization_pb2 as pb
from services.schema.codes import Code

DOMAIN = "creditauth.v1"
TRAILER = "grpc-status-details-bin"
# Stable reasons: callers may switch on these; the message text may change.
REASONS = {
    Code.INVALID_ARGUMENT: "INVALID_FIELD",
    Code.UNAUTHENTICATED: "NO_VALID_CREDENTIALS",
    Code.PERMISSION_DENIED: "NOT_GRANTED",
    Code.RESOURCE_EXHAUSTED: "OVERLOADED",
    Code.UNAVAILABLE: "UNAVAILABLE",
    Code.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    Code.ALREADY_EXISTS: "APPLICATION_ID_REUSED",
    Code.FAILED_PRECONDITION: "NOT_READY",
    Code.INTERNAL: "INTERNAL",
}
# How long to wait before retrying: shed load clears within a queue wait (250 ms by
# default); a replica or store outage is probed about once a second.
RETRY_AFTER_S = {Code.RESOURCE_EXHAUSTED: 0.25, Code.UNAVAILABLE: 1.0}


def _pack(message: object) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)  # type: ignore[arg-type]
    return out


@lru_cache(maxsize=64)
def _common(code: int) -> tuple[any_pb2.Any, ...]:
    parts = [_pack(error_details_pb2.ErrorInfo(reason=REASONS.get(Code(code), "UNKNOWN"), domain=DOMAIN))]
    delay = RETRY_AFTER_S.get(Code(code))
    if delay is not None:
        retry = duration_pb2.Duration()
        retry.FromTimedelta(dt.timedelta(seconds=delay))
        parts.append(_pack(error_details_pb2.RetryInfo(retry_delay=retry)))
    return tuple(parts)


def trailer(code: int, message: str, field: str = "") -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries the details of a refusal."""
    status = status_pb2.Status(code=code, message=message)
    status.details.extend(_common(code))
    if field:
        status.details.append(_bad_request(field, message))
    return ((TRAILER, status.SerializeToString()),)


def _bad_request(field: str, message: str) -> any_pb2.Any:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
    return _pack(error_details_pb2.BadRequest(field_violations=[violation]))


def code_details(max_code: int) -> tuple[bytes, ...]:
    """Per status code 0..max_code, its ``ItemError.details`` entries, framed (field 4)."""
    out = [b""]
    for code in range(1, max_code + 1):
        out.append(pb.ItemError(details=_common(code)).SerializeToString())
    return tuple(out)


def item_details(field: str, message: str) -> bytes:
    """An item's own ``ItemError.details`` beyond its code's: a ``BadRequest`` naming ``field``."""
    return pb.ItemError(details=[_bad_request(field, message)]).SerializeToString() if field else b""
