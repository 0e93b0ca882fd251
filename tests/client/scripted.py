"""A small real gRPC server for the client tests: it answers each attempt from a script
(a status with ``google.rpc`` details, or a decision) and records what it saw."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from creditauth_client.errors import TRAILER
from creditauth_client.v1 import authorization_pb2 as pb
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

SERVICE = "creditauth.v1.CreditAuthorization"


@dataclass(frozen=True)
class Outcome:
    """``code`` None answers with a decision; ``hang`` waits for the server's release."""

    code: grpc.StatusCode | None = None
    retry_after: float | None = None
    field: str = ""
    reason: str = "TEST"
    hang: bool = False


OK = Outcome()


def _pack(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def details_trailer(o: Outcome) -> tuple[tuple[str, bytes], ...]:
    assert o.code is not None
    status = status_pb2.Status(code=o.code.value[0], message=f"scripted {o.code.name}")
    status.details.append(_pack(error_details_pb2.ErrorInfo(reason=o.reason, domain="creditauth.v1")))
    if o.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(dt.timedelta(seconds=o.retry_after))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if o.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=o.field, description="bad")
        status.details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    return ((TRAILER, status.SerializeToString()),)


@dataclass
class Seen:
    at: float  # time.monotonic() on arrival
    method: str
    metadata: dict[str, str]
    time_remaining: float | None
    peer_common_name: str = ""


@dataclass
class ScriptedServer:
    """Answers attempt ``i`` with ``script[i]`` (the last entry repeats)."""

    script: list[Outcome]
    trailer: Any = details_trailer  # (Outcome) -> trailing metadata; the real server's may be swapped in
    credentials: grpc.ServerCredentials | None = None
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ScriptedServer:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Authorize": grpc.unary_unary_rpc_method_handler(
                self._authorize, pb.AuthorizeRequest.FromString, pb.AuthorizeResponse.SerializeToString),
            "AuthorizeStream": grpc.stream_stream_rpc_method_handler(
                self._stream, pb.AuthorizeRequest.FromString, pb.AuthorizeResponse.SerializeToString),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = "127.0.0.1:0"
        self.port = (self.server.add_secure_port(address, self.credentials) if self.credentials
                     else self.server.add_insecure_port(address))
        self.server.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.stop(grace=None)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def gaps(self) -> list[float]:
        return [b.at - a.at for a, b in zip(self.seen, self.seen[1:], strict=False)]

    def _next(self, method: str, context: grpc.ServicerContext) -> Outcome:
        names = context.auth_context().get("x509_common_name") or [b""]
        cn = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
        with self._lock:
            self.seen.append(Seen(time.monotonic(), method, {k: str(v) for k, v in context.invocation_metadata()},
                                  context.time_remaining(), cn))
            return self.script[min(len(self.seen), len(self.script)) - 1]

    def _fail(self, o: Outcome, context: grpc.ServicerContext) -> None:
        assert o.code is not None
        context.set_trailing_metadata(self.trailer(o))
        context.abort(o.code, f"scripted {o.code.name}")

    def _authorize(self, request: pb.AuthorizeRequest, context: grpc.ServicerContext) -> pb.AuthorizeResponse:
        o = self._next("Authorize", context)
        if o.hang:
            self.release.wait(30)  # released by the test (or stop); bounded so a bug cannot wedge the suite
        if o.code is not None:
            self._fail(o, context)
        return pb.AuthorizeResponse(application_id=request.application_id, decision=pb.DECISION_APPROVE,
                                    decision_id=f"d{len(self.seen)}")

    def _stream(self, requests: Iterator[pb.AuthorizeRequest], context: grpc.ServicerContext,
                ) -> Iterator[pb.AuthorizeResponse]:
        o = self._next("AuthorizeStream", context)
        if o.code is not None:
            self._fail(o, context)
        for r in requests:
            yield pb.AuthorizeResponse(application_id=r.application_id, decision=pb.DECISION_REVIEW)
