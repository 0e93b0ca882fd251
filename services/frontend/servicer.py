"""The CreditAuthorization service: three RPCs over one batcher."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.errors import CreditAuthError, DeadlineExceeded, InvalidRequest
from services.frontend.batcher import Batcher
from services.frontend.codec import Item, error_response, to_batch, to_responses, validate
from services.frontend.status import status_number, status_of
from services.settings import ServingSettings
from services.telemetry import NullTelemetry

Context = grpc.aio.ServicerContext[Any, Any]
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_DEADLINE = status_number(grpc.StatusCode.DEADLINE_EXCEEDED)
_INVALID = status_number(grpc.StatusCode.INVALID_ARGUMENT)
# A stream window: requests read back-to-back go to the replicas together.
STREAM_WINDOW = 512
STREAM_WINDOWS_IN_FLIGHT = 4


class CreditAuthorizationServicer(pb_grpc.CreditAuthorizationServicer):  # type: ignore[misc]
    def __init__(self, batcher: Batcher, settings: ServingSettings, telemetry: NullTelemetry | None = None) -> None:
        self._batcher = batcher
        self._settings = settings
        self._tel = telemetry or NullTelemetry()

    def _deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        if remaining is None or math.isinf(remaining):
            remaining = self._settings.default_deadline_s
        return time.time() + remaining

    async def Authorize(self, request: pb.AuthorizeRequest, context: Context) -> pb.AuthorizeResponse:
        t0 = time.perf_counter()
        tel = self._tel
        if tel.sampled():
            with tel.span("Authorize") as traceparent:
                return await self._authorize(request, context, t0, traceparent or "")
        return await self._authorize(request, context, t0, "")

    async def _authorize(
        self, request: pb.AuthorizeRequest, context: Context, t0: float, trace: str
    ) -> pb.AuthorizeResponse:
        deadline = self._deadline(context)
        tel = self._tel
        try:
            item = validate(request, deadline, trace)
            if deadline <= time.time():
                raise DeadlineExceeded("deadline already passed")
            resp = await self._batcher.submit_one(item)
        except CreditAuthError as exc:
            code = status_of(exc)
            tel.rpc("Authorize", code.name, time.perf_counter() - t0)
            await context.abort(code, str(exc))
            raise  # unreachable: abort raises
        out = to_responses([item], resp)[0]
        tel.outcomes(resp.decision, resp.status)
        if out.HasField("error"):
            code = _CODES[out.error.code]
            tel.rpc("Authorize", code.name, time.perf_counter() - t0)
            await context.abort(code, out.error.message)
        tel.rpc("Authorize", "OK", time.perf_counter() - t0)
        return out

    async def AuthorizeBatch(
        self, request: pb.AuthorizeBatchRequest, context: Context
    ) -> pb.AuthorizeBatchResponse:
        n = len(request.requests)
        if n > self._settings.max_batch_request:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"requests: at most {self._settings.max_batch_request} per call, got {n}",
            )
        t0 = time.perf_counter()
        deadline = self._deadline(context)
        if self._tel.sampled():
            with self._tel.span("AuthorizeBatch", size=n) as trace:
                answers = await self._decide(list(request.requests), deadline, context, trace or "")
        else:
            answers = await self._decide(list(request.requests), deadline, context)
        self._tel.rpc("AuthorizeBatch", "OK", time.perf_counter() - t0)
        return pb.AuthorizeBatchResponse(responses=answers)

    async def _decide(
        self, requests: list[pb.AuthorizeRequest], deadline: float, context: Context | None, trace: str = ""
    ) -> list[pb.AuthorizeResponse]:
        """Answers for ``requests`` in order; a bad item fails only itself."""
        answers: list[pb.AuthorizeResponse | None] = [None] * len(requests)
        items: list[Item] = []
        where: list[int] = []
        for i, req in enumerate(requests):
            try:
                items.append(validate(req, deadline))
                where.append(i)
            except InvalidRequest as exc:
                answers[i] = error_response(
                    req.application_id, _INVALID, f"requests[{i}].{exc.field}" if context else exc.field, exc.message
                )
        if items:
            try:
                if deadline <= time.time():
                    raise DeadlineExceeded("deadline already passed")
                resp = await self._batcher.submit_batch(to_batch(items, trace))
                self._tel.outcomes(resp.decision, resp.status)
                for i, r in zip(where, to_responses(items, resp), strict=True):
                    answers[i] = r
            except CreditAuthError as exc:
                if context is not None and len(items) == len(requests):
                    # Nothing in the call can be answered: fail the call itself.
                    await context.abort(status_of(exc), str(exc))
                code = status_number(status_of(exc))
                for i, it in zip(where, items, strict=True):
                    answers[i] = error_response(it.application_id, code, "", str(exc))
        return [a for a in answers if a is not None]

    async def AuthorizeStream(
        self, request_iterator: AsyncIterator[pb.AuthorizeRequest], context: Context
    ) -> AsyncIterator[pb.AuthorizeResponse]:
        """Read ahead into windows, keep a few windows in flight, answer in order."""
        windows: asyncio.Queue[asyncio.Task[list[pb.AuthorizeResponse]] | None] = asyncio.Queue(
            STREAM_WINDOWS_IN_FLIGHT
        )
        incoming: asyncio.Queue[pb.AuthorizeRequest | None] = asyncio.Queue(STREAM_WINDOW * 4)

        async def read() -> None:
            try:
                async for req in request_iterator:
                    await incoming.put(req)
            finally:
                await incoming.put(None)

        async def assemble() -> None:
            done = False
            while not done:
                first = await incoming.get()
                if first is None:
                    break
                window = [first]
                while len(window) < STREAM_WINDOW and not incoming.empty():
                    nxt = incoming.get_nowait()
                    if nxt is None:
                        done = True
                        break
                    window.append(nxt)
                deadline = self._deadline(context)
                await windows.put(asyncio.ensure_future(self._decide(window, deadline, None)))
            await windows.put(None)

        reader = asyncio.ensure_future(read())
        assembler = asyncio.ensure_future(assemble())
        try:
            while True:
                task = await windows.get()
                if task is None:
                    break
                for r in await task:
                    yield r
        finally:
            reader.cancel()
            assembler.cancel()
