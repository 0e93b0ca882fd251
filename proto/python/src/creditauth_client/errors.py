"""The machine-readable details of a refused call (``google.rpc`` in ``grpc-status-details-bin``).

The server puts a ``google.rpc.Status`` in that trailer with an ``ErrorInfo`` (a stable
``reason`` to switch on), a ``BadRequest`` naming the offending field on
``INVALID_ARGUMENT``, and a ``RetryInfo`` on ``RESOURCE_EXHAUSTED`` and ``UNAVAILABLE``.
Code should read these rather than parse the message text, which may change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

TRAILER = "grpc-status-details-bin"
# A Status larger than this is not ours; do not spend memory decoding it.
_MAX_DETAILS_BYTES = 64 * 1024


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class ErrorDetails:
    """What a refusal says, decoded; empty fields when the server sent no details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    # Seconds the server asked the caller to wait before retrying (RetryInfo).
    retry_delay: float | None = None


def status_from_metadata(trailing: Iterable[tuple[str, Any]] | None) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` carried in trailing metadata, or ``None``."""
    for key, value in trailing or ():
        if key != TRAILER or not isinstance(value, bytes) or len(value) > _MAX_DETAILS_BYTES:
            continue
        try:
            return status_pb2.Status.FromString(value)
        except DecodeError:
            return None
    return None


def retry_delay(status: status_pb2.Status | None) -> float | None:
    """The delay a ``RetryInfo`` in ``status`` asks for, in seconds (``None`` without one)."""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, float(info.retry_delay.ToTimedelta().total_seconds()))
    return None


def error_details(err: grpc.RpcError) -> ErrorDetails:
    """Decode a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    call: Any = err  # both kinds are also a Call with code()/details()/trailing_metadata()
    return _decoded(call.code(), call.details() or "", status_from_metadata(call.trailing_metadata()))


def item_error_details(error: Any) -> ErrorDetails:
    """Decode the ``ItemError`` of a batch or stream item (it carries the same details as a
    refused call: ``ErrorInfo``, ``BadRequest`` naming ``requests[i].<field>``, ``RetryInfo``)."""
    status = status_pb2.Status(code=error.code, message=error.message, details=list(error.details))
    return _decoded(_CODES.get(error.code, grpc.StatusCode.UNKNOWN), error.message, status)


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _decoded(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> ErrorDetails:
    out = ErrorDetails(code=code, message=message, retry_delay=retry_delay(status))
    if status is None:
        return out
    reason, domain, meta, violations = "", "", {}, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, meta = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return ErrorDetails(out.code, out.message, reason, domain, meta, tuple(violations), out.retry_delay)
