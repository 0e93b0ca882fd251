"""The one table mapping domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from features import FeatureError
from services.errors import (
    BackendUnavailable,
    ConfigError,
    CreditAuthError,
    DeadlineExceeded,
    InvalidRequest,
    ModelError,
    Overloaded,
    ShuttingDown,
)

# First match wins: subclasses before their bases.
STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (FeatureError, grpc.StatusCode.UNAVAILABLE),
    (ModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (CreditAuthError, grpc.StatusCode.INTERNAL),
)


def status_of(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def status_number(code: grpc.StatusCode) -> int:
    """The numeric code, as carried in ``ItemError.code``."""
    value: tuple[int, str] = code.value
    return value[0]
