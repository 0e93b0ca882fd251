"""The CreditAuthorization service: three RPCs over one batcher, on raw bytes.

The handlers are registered without protobuf (de)serializers: requests are
decoded and responses encoded by ``services.frontend._wire`` straight between
bytes and column arrays, so a batch RPC costs about a microsecond of Python
per decision instead of the tens a protobuf object tree costs.
``services.frontend.codec`` is the readable reference of the same rules (tests
hold the two to identical answers).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import numpy as np

from services.errors import CreditAuthError, DeadlineExceeded
from services.frontend import _wire
from services.frontend.batcher import Answer, Batcher
from services.frontend.codec import Item, to_batch
from services.frontend.status import status_number, status_of
from services.policy.currency import CURRENCIES
from services.scoring import RequestBatch, ResponseBatch
from services.settings import ServingSettings
from services.telemetry import NullTelemetry

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE = "creditauth.v1.CreditAuthorization"
CURRENCY_TABLE = b"".join(c.code.encode() for c in CURRENCIES)
CURRENCY_CODES = [c.code.encode() for c in CURRENCIES]
MAX_PRODUCT = 4  # highest creditauth.v1.Product value
MAX_CHANNEL = 5  # highest creditauth.v1.Channel value
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_INVALID = status_number(grpc.StatusCode.INVALID_ARGUMENT)
# A stream window: requests read back-to-back go to the replicas together.
STREAM_WINDOW = 512
STREAM_WINDOWS_IN_FLIGHT = 4


def prepare(resp: ResponseBatch) -> _wire.Encoder:
    """Once per backend call: the encoder every unit of the call answers from."""
    return _wire.Encoder(resp, CURRENCY_CODES)


class CreditAuthorizationServicer:
    def __init__(self, batcher: Batcher, settings: ServingSettings, telemetry: NullTelemetry | None = None) -> None:
        self._batcher = batcher
        self._settings = settings
        self._tel = telemetry or NullTelemetry()

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Authorize": grpc.unary_unary_rpc_method_handler(self.Authorize),
                "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(self.AuthorizeBatch),
                "AuthorizeStream": grpc.stream_stream_rpc_method_handler(self.AuthorizeStream),
            },
        )

    def _deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        if remaining is None or math.isinf(remaining):
            remaining = self._settings.default_deadline_s
        return time.time() + remaining

    # -- Authorize ---------------------------------------------------------------
    async def Authorize(self, data: bytes, context: Context) -> bytes:
        t0 = time.perf_counter()
        tel = self._tel
        if tel.sampled():
            with tel.span("Authorize") as traceparent:
                return await self._authorize(data, context, t0, traceparent or "")
        return await self._authorize(data, context, t0, "")

    async def _authorize(self, data: bytes, context: Context, t0: float, trace: str) -> bytes:
        deadline = self._deadline(context)
        tel = self._tel
        try:
            r = _wire.decode_one(data, CURRENCY_TABLE, MAX_PRODUCT, MAX_CHANNEL)
        except _wire.WireError as exc:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed AuthorizeRequest: {exc}", t0)
        if not r[0]:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{r[2]}: {r[3]}", t0)
        item = Item(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], deadline, trace)
        try:
            if deadline <= time.time():
                raise DeadlineExceeded("deadline already passed")
            ans = await self._batcher.submit_one(item)
        except CreditAuthError as exc:
            await self._abort(context, status_of(exc), str(exc), t0)
        resp = ans.batch
        tel.outcomes(resp.decision[ans.start : ans.start + 1], resp.status[ans.start : ans.start + 1])
        code = int(resp.status[ans.start])
        if code:
            await self._abort(context, _CODES[code], resp.message or "not decided", t0)
        tel.rpc("Authorize", "OK", time.perf_counter() - t0)
        out: bytes = _wire.encode_one(ans.prepared, ans.start, item.application_id.encode(), item.currency)
        return out

    async def _abort(self, context: Context, code: grpc.StatusCode, message: str, t0: float) -> NoReturn:
        self._tel.rpc("Authorize", code.name, time.perf_counter() - t0)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")

    # -- AuthorizeBatch ----------------------------------------------------------
    async def AuthorizeBatch(self, data: bytes, context: Context) -> bytes:
        t0 = time.perf_counter()
        try:
            decoded = _wire.decode(data, True, CURRENCY_TABLE, MAX_PRODUCT, MAX_CHANNEL)
        except _wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed AuthorizeBatchRequest: {exc}")
        n = decoded.total
        if n > self._settings.max_batch_request:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"requests: at most {self._settings.max_batch_request} per call, got {n}",
            )
        deadline = self._deadline(context)
        if self._tel.sampled():
            with self._tel.span("AuthorizeBatch", size=n) as trace:
                body = await self._decide(decoded, deadline, context, trace or "")
        else:
            body = await self._decide(decoded, deadline, context, "")
        self._tel.rpc("AuthorizeBatch", "OK", time.perf_counter() - t0)
        return body

    async def _decide(self, d: Any, deadline: float, context: Context, trace: str) -> bytes:
        """One AuthorizeBatchResponse for a decoded request; a bad item fails only itself."""
        errors = [(pos, app, _INVALID, f"requests[{pos}].{field}", msg) for pos, app, field, msg in d.errors]
        k = len(d.index)
        if k == 0:
            out: bytes = _wire.encode_batch(d.total, None, d.index, d.app_list, d.currency, errors)
            return out
        batch = RequestBatch(
            application_ids=d.application_ids,
            merchant_ids=d.merchant_ids,
            amount_minor=d.amount,
            currency=d.currency,
            term_months=d.term,
            product=d.product,
            channel=d.channel,
            declared_revenue_minor=d.declared,
            deadline=np.full(k, deadline),
            trace=trace,
        )
        try:
            if deadline <= time.time():
                raise DeadlineExceeded("deadline already passed")
            ans = await self._batcher.submit_batch(batch)
        except CreditAuthError as exc:
            if not errors:  # nothing in the call can be answered: fail the call itself
                await context.abort(status_of(exc), str(exc))
            code = status_number(status_of(exc))
            apps = [a.decode() for a in d.app_list]
            errors += [(int(pos), apps[j], code, "", str(exc)) for j, pos in enumerate(d.index)]
            out = _wire.encode_batch(d.total, None, d.index[:0], [], d.currency[:0], errors)
            return out
        resp = ans.batch
        s = slice(ans.start, ans.start + ans.size)
        self._tel.outcomes(resp.decision[s], resp.status[s])
        out = _wire.encode_batch(d.total, ans.prepared, d.index, d.app_list, d.currency, errors, ans.start)
        return out

    # -- AuthorizeStream ---------------------------------------------------------
    async def AuthorizeStream(self, request_iterator: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        """Read ahead into windows, keep a few windows in flight, answer in order."""
        windows: asyncio.Queue[asyncio.Task[list[bytes]] | None] = asyncio.Queue(STREAM_WINDOWS_IN_FLIGHT)
        incoming: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_WINDOW * 4)

        async def read() -> None:
            try:
                async for raw in request_iterator:
                    await incoming.put(raw)
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
                await windows.put(asyncio.ensure_future(self._window(window, self._deadline(context))))
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

    async def _window(self, raws: list[bytes], deadline: float) -> list[bytes]:
        """Answers for one stream window, in order."""
        answers: list[bytes | None] = [None] * len(raws)
        items: list[Item] = []
        where: list[int] = []
        for i, raw in enumerate(raws):
            try:
                r = _wire.decode_one(raw, CURRENCY_TABLE, MAX_PRODUCT, MAX_CHANNEL)
            except _wire.WireError as exc:
                answers[i] = _wire.encode_error(b"", _INVALID, "", f"malformed AuthorizeRequest: {exc}")
                continue
            if not r[0]:
                answers[i] = _wire.encode_error(r[1].encode(), _INVALID, r[2], r[3])
                continue
            items.append(Item(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], deadline))
            where.append(i)
        if items:
            try:
                if deadline <= time.time():
                    raise DeadlineExceeded("deadline already passed")
                ans: Answer = await self._batcher.submit_batch(to_batch(items))
                resp = ans.batch
                s = slice(ans.start, ans.start + ans.size)
                self._tel.outcomes(resp.decision[s], resp.status[s])
                for j, (i, it) in enumerate(zip(where, items, strict=True)):
                    answers[i] = _wire.encode_one(ans.prepared, ans.start + j, it.application_id.encode(), it.currency)
            except CreditAuthError as exc:
                code = status_number(status_of(exc))
                for i, it in zip(where, items, strict=True):
                    answers[i] = _wire.encode_error(it.application_id.encode(), code, "", str(exc))
        return [a for a in answers if a is not None]
