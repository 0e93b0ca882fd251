"""The ceiling: a grpc.aio server on the same proto whose handlers do no scoring."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _answer(req: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
    return pb.AuthorizeResponse(application_id=req.application_id, decision=pb.DECISION_REVIEW)


class EchoServicer(pb_grpc.CreditAuthorizationServicer):  # type: ignore[misc]
    async def Authorize(self, request: pb.AuthorizeRequest, context: Context) -> pb.AuthorizeResponse:
        return _answer(request)

    async def AuthorizeBatch(self, request: pb.AuthorizeBatchRequest, context: Context) -> pb.AuthorizeBatchResponse:
        return pb.AuthorizeBatchResponse(responses=[_answer(r) for r in request.requests])

    async def AuthorizeStream(
        self, request_iterator: AsyncIterator[pb.AuthorizeRequest], context: Context
    ) -> AsyncIterator[pb.AuthorizeResponse]:
        async for r in request_iterator:
            yield _answer(r)


async def start_echo(host: str, port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    pb_grpc.add_CreditAuthorizationServicer_to_server(EchoServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def serve_echo(host: str, port: int) -> None:
    server, bound = await start_echo(host, port)
    print(f"echo: serving on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2)
