"""Status codes at the gRPC boundary: ``services.errors`` decides the code, this spells it for grpcio."""

from __future__ import annotations

import grpc

from services.errors import code_of

_GRPC = {c.value[0]: c for c in grpc.StatusCode}


def grpc_code(code: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a status number (``UNKNOWN`` for one grpcio does not know)."""
    return _GRPC.get(code, grpc.StatusCode.UNKNOWN)


def status_of(exc: BaseException) -> grpc.StatusCode:
    return grpc_code(code_of(exc))


def status_number(code: grpc.StatusCode) -> int:
    """The numeric code, as carried in ``ItemError.code``."""
    value: tuple[int, str] = code.value
    return value[0]
