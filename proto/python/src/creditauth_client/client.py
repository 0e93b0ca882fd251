"""The synchronous client: one channel, typed calls, default deadlines, retries."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc

from creditauth_client.connection import Tls, connection
from creditauth_client.retry import DEFAULT_RETRY, DEFAULT_TIMEOUTS, RetryInterceptor, RetryPolicy, Timeouts
from creditauth_client.v1 import authorization_pb2 as pb
from creditauth_client.v1 import authorization_pb2_grpc as pb_grpc
from creditauth_client.v1 import controls_pb2_grpc

Metadata = Sequence[tuple[str, str | bytes]]


def call_metadata(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...] | None:
    return tuple(metadata) if metadata else None


def batch_request(requests: Iterable[pb.AuthorizeRequest] | pb.AuthorizeBatchRequest) -> pb.AuthorizeBatchRequest:
    if isinstance(requests, pb.AuthorizeBatchRequest):
        return requests
    return pb.AuthorizeBatchRequest(requests=list(requests))


class AuthorizationClient:
    """A blocking client for ``creditauth.v1.CreditAuthorization`` (and ``Controls``).

    ``AuthorizationClient("127.0.0.1:50051", insecure=True)`` for a local front end;
    ``AuthorizationClient("api:443", tls=Tls.from_files(ca="ca.pem"), token_file="token")``
    otherwise. ``timeout`` on a call overrides the default deadline and covers its retries.
    Failures raise ``grpc.RpcError``; ``creditauth_client.error_details`` decodes them.
    """

    def __init__(
        self, target: str, *, insecure: bool = False, tls: Tls | None = None, token: str | None = None,
        token_file: str | os.PathLike[str] | None = None, retry: RetryPolicy | None = DEFAULT_RETRY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS, options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        conn = connection(target, insecure=insecure, tls=tls, token=token, token_file=token_file,
                          retry=retry, options=options)
        raw = (grpc.insecure_channel(conn.target, options=conn.options) if conn.credentials is None
               else grpc.secure_channel(conn.target, conn.credentials, options=conn.options))
        self._raw = raw
        # Always intercepted: the interceptor gives calls their default deadlines even without retries.
        self.channel: grpc.Channel = grpc.intercept_channel(raw, RetryInterceptor(retry, timeouts))
        self.timeouts = timeouts
        self.stub = pb_grpc.CreditAuthorizationStub(self.channel)
        # The admin service on the same channel (its calls need the controls grant).
        self.controls = controls_pb2_grpc.ControlsStub(self.channel)

    def authorize(
        self, request: pb.AuthorizeRequest, *, timeout: float | None = None, metadata: Metadata | None = None,
    ) -> pb.AuthorizeResponse:
        response: pb.AuthorizeResponse = self.stub.Authorize(
            request, timeout=timeout, metadata=call_metadata(metadata)
        )
        return response

    def authorize_batch(
        self, requests: Iterable[pb.AuthorizeRequest] | pb.AuthorizeBatchRequest, *,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> pb.AuthorizeBatchResponse:
        """``responses[i]`` answers ``requests[i]``; an undecidable item carries ``error``."""
        response: pb.AuthorizeBatchResponse = self.stub.AuthorizeBatch(
            batch_request(requests), timeout=timeout, metadata=call_metadata(metadata)
        )
        return response

    def authorize_stream(
        self, requests: Iterable[pb.AuthorizeRequest], *, timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Iterator[pb.AuthorizeResponse]:
        """One answer per request, in order; iterate the result to receive them."""
        responses = self.stub.AuthorizeStream(
            iter(requests), timeout=timeout or self.timeouts.stream, metadata=call_metadata(metadata)
        )
        return iter(responses)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> AuthorizationClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
