"""Status codes: gRPC's, as ``google.rpc.Code`` defines them (``google/rpc/code.proto``).

Every per-item status in a batch, every error frame on the direct channel and every gRPC
status the front end answers with is one of these numbers; the values come from the
proto, so no module spells a status number out by hand.
"""

from __future__ import annotations

import enum

from google.rpc import code_pb2


class Code(enum.IntEnum):
    OK = code_pb2.OK
    CANCELLED = code_pb2.CANCELLED
    UNKNOWN = code_pb2.UNKNOWN
    INVALID_ARGUMENT = code_pb2.INVALID_ARGUMENT
    DEADLINE_EXCEEDED = code_pb2.DEADLINE_EXCEEDED
    NOT_FOUND = code_pb2.NOT_FOUND
    ALREADY_EXISTS = code_pb2.ALREADY_EXISTS
    PERMISSION_DENIED = code_pb2.PERMISSION_DENIED
    RESOURCE_EXHAUSTED = code_pb2.RESOURCE_EXHAUSTED
    FAILED_PRECONDITION = code_pb2.FAILED_PRECONDITION
    ABORTED = code_pb2.ABORTED
    OUT_OF_RANGE = code_pb2.OUT_OF_RANGE
    UNIMPLEMENTED = code_pb2.UNIMPLEMENTED
    INTERNAL = code_pb2.INTERNAL
    UNAVAILABLE = code_pb2.UNAVAILABLE
    DATA_LOSS = code_pb2.DATA_LOSS
    UNAUTHENTICATED = code_pb2.UNAUTHENTICATED


def name(code: int) -> str:
    """``"DEADLINE_EXCEEDED"`` for 4; the number itself for a code the proto does not name."""
    try:
        return Code(code).name
    except ValueError:
        return str(code)
