"""A tiny CreditAuthorization server standing in for the system under test.

It validates like the real API (bad input -> INVALID_ARGUMENT naming the
field), answers a decision derived from the amount, and can misbehave on
purpose: ``--stall-after N --stall-ms T`` blocks its whole event loop once,
for T ms, at the N-th request (a GC pause, a stuck replica), and
``--delay-ms`` adds a fixed service time.

Run: ``python -m tests.loadtest.echo_server --port 0``; prints ``PORT <n>``
once serving, stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc

CURRENCIES = frozenset({"CNY", "USD", "EUR", "HKD", "GBP", "SGD", "JPY"})
INVALID = grpc.StatusCode.INVALID_ARGUMENT
Context = grpc.aio.ServicerContext[Any, Any]


def invalid_field(req: pb.AuthorizeRequest) -> str | None:
    if not req.application_id:
        return "application_id"
    if not req.merchant_id:
        return "merchant_id"
    if req.requested_amount.amount_minor <= 0:
        return "requested_amount.amount_minor"
    if req.requested_amount.currency not in CURRENCIES:
        return "requested_amount.currency"
    if not 1 <= req.term_months <= 60:
        return "term_months"
    return None


def answer(req: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
    approve = req.requested_amount.amount_minor % 4 != 0
    r = pb.AuthorizeResponse(
        application_id=req.application_id,
        decision_id=f"echo-{req.application_id}",
        decision=pb.DECISION_APPROVE if approve else pb.DECISION_REVIEW,
        risk_grade="B",
    )
    r.approved_limit.amount_minor = req.requested_amount.amount_minor if approve else 0
    r.approved_limit.currency = req.requested_amount.currency
    return r


def item(req: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
    bad = invalid_field(req)
    if bad is not None:
        return pb.AuthorizeResponse(
            application_id=req.application_id, error=pb.ItemError(code=INVALID.value[0], field=bad, message="bad")
        )
    return answer(req)


class EchoServicer(pb_grpc.CreditAuthorizationServicer):  # type: ignore[misc]
    def __init__(self, *, stall_after: int = 0, stall_ms: float = 0.0, delay_ms: float = 0.0) -> None:
        self.requests = 0
        self.stall_after = stall_after
        self.stall_s = stall_ms / 1000.0
        self.delay_s = delay_ms / 1000.0

    def _tick(self, n: int = 1) -> None:
        before = self.requests
        self.requests += n
        if self.stall_after and before < self.stall_after <= self.requests:
            # Block the event loop itself: nothing is read or answered meanwhile.
            time.sleep(self.stall_s)

    async def Authorize(self, request: pb.AuthorizeRequest, context: Context) -> pb.AuthorizeResponse:
        self._tick()
        bad = invalid_field(request)
        if bad is not None:
            await context.abort(INVALID, f"{bad}: invalid")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return answer(request)

    async def AuthorizeBatch(
        self, request: pb.AuthorizeBatchRequest, context: Context
    ) -> pb.AuthorizeBatchResponse:
        self._tick(len(request.requests))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return pb.AuthorizeBatchResponse(responses=[item(r) for r in request.requests])

    async def AuthorizeStream(
        self, request_iterator: AsyncIterator[pb.AuthorizeRequest], context: Context
    ) -> AsyncIterator[pb.AuthorizeResponse]:
        async for req in request_iterator:
            self._tick()
            yield item(req)


async def serve(port: int, servicer: EchoServicer) -> None:
    server = grpc.aio.server()
    pb_grpc.add_CreditAuthorizationServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--stall-after", type=int, default=0)
    p.add_argument("--stall-ms", type=float, default=0.0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    a = p.parse_args(argv)
    servicer = EchoServicer(stall_after=a.stall_after, stall_ms=a.stall_ms, delay_ms=a.delay_ms)
    asyncio.run(serve(a.port, servicer))
    sys.exit(0)


if __name__ == "__main__":
    main()
