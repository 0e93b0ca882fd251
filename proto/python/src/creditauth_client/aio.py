"""The asyncio client: the same calls as :class:`~creditauth_client.AuthorizationClient`, awaited."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any

import grpc.aio

from creditauth_client.client import Metadata, batch_request, call_metadata
from creditauth_client.connection import Tls, connection
from creditauth_client.retry import DEFAULT_RETRY, DEFAULT_TIMEOUTS, AsyncRetryInterceptor, RetryPolicy, Timeouts
from creditauth_client.v1 import authorization_pb2 as pb
from creditauth_client.v1 import authorization_pb2_grpc as pb_grpc
from creditauth_client.v1 import controls_pb2_grpc


class AsyncAuthorizationClient:
    """``async with AsyncAuthorizationClient(target, insecure=True) as client:
    await client.authorize(request)``. Create it inside the event loop that uses it."""

    def __init__(
        self, target: str, *, insecure: bool = False, tls: Tls | None = None, token: str | None = None,
        token_file: str | os.PathLike[str] | None = None, retry: RetryPolicy | None = DEFAULT_RETRY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS, options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        conn = connection(target, insecure=insecure, tls=tls, token=token, token_file=token_file,
                          retry=retry, options=options)
        interceptors: Sequence[Any] = [AsyncRetryInterceptor(retry, timeouts)]
        self.channel: grpc.aio.Channel = (
            grpc.aio.insecure_channel(conn.target, options=conn.options, interceptors=interceptors)
            if conn.credentials is None
            else grpc.aio.secure_channel(conn.target, conn.credentials, options=conn.options,
                                         interceptors=interceptors)
        )
        self.timeouts = timeouts
        self.stub = pb_grpc.CreditAuthorizationStub(self.channel)
        self.controls = controls_pb2_grpc.ControlsStub(self.channel)

    async def authorize(
        self, request: pb.AuthorizeRequest, *, timeout: float | None = None, metadata: Metadata | None = None,
    ) -> pb.AuthorizeResponse:
        response: pb.AuthorizeResponse = await self.stub.Authorize(
            request, timeout=timeout, metadata=call_metadata(metadata)
        )
        return response

    async def authorize_batch(
        self, requests: Iterable[pb.AuthorizeRequest] | pb.AuthorizeBatchRequest, *,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> pb.AuthorizeBatchResponse:
        response: pb.AuthorizeBatchResponse = await self.stub.AuthorizeBatch(
            batch_request(requests), timeout=timeout, metadata=call_metadata(metadata)
        )
        return response

    async def authorize_stream(
        self, requests: AsyncIterable[pb.AuthorizeRequest] | Iterable[pb.AuthorizeRequest], *,
        timeout: float | None = None, metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.AuthorizeResponse]:
        """One answer per request, in order."""
        source = aiter(requests) if isinstance(requests, AsyncIterable) else iter(requests)
        call = self.stub.AuthorizeStream(
            source, timeout=timeout or self.timeouts.stream, metadata=call_metadata(metadata)
        )
        async for response in call:
            yield response

    async def close(self) -> None:
        await self.channel.close(grace=None)

    async def __aenter__(self) -> AsyncAuthorizationClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
