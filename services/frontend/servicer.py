"""The CreditAuthorization service: three RPCs over one batcher, on raw bytes.

The handlers are registered without protobuf (de)serializers: requests are decoded
into records and responses encoded from the replica's records by the C codec
(``services.frontend.wire``), so a batch RPC costs about a microsecond of Python per
decision instead of the tens a protobuf object tree costs.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import numpy as np

from services.auth import Gate, Grant
from services.errors import CreditAuthError, DeadlineExceeded, code_of
from services.frontend import details, wire
from services.frontend.admission import Admission
from services.frontend.batcher import Answer, Batcher
from services.frontend.status import grpc_code
from services.schema.codes import Code
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch
from services.settings import ServingSettings
from services.telemetry import NullTelemetry

if TYPE_CHECKING:  # pyarrow loads where a log is opened (the composition root), not here
    from services.decisionlog.refusals import Item, RefusalLog

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE = "creditauth.v1.CreditAuthorization"
# A stream window: requests read back-to-back go to the replicas together.
STREAM_WINDOW = 512
STREAM_WINDOWS_IN_FLIGHT = 4
# The largest AuthorizeRequest a caller can mean (every field at its longest is ~180 bytes);
# a longer one is refused unread. It bounds what a stream holds (STREAM_WINDOW * 4 read
# ahead plus STREAM_WINDOWS_IN_FLIGHT windows, each item at most this: ~2 MiB per stream)
# and sizes the receive limit (``receive_limit``).
MAX_REQUEST_BYTES = 512


def receive_limit(max_batch_request: int) -> int:
    """The largest message a front end reads: the longest allowed batch of the longest items."""
    return max_batch_request * (MAX_REQUEST_BYTES + 4) + 1024


def prepare(resp: DecisionBatch) -> wire.Encoder:
    """Once per backend call: the encoder every unit of the call answers from."""
    return wire.encoder(resp)


# Refusals on entry have constant texts: their trailers are built once, not per shed call.
_trailer = functools.lru_cache(maxsize=16)(details.trailer)


class CreditAuthorizationServicer:
    """``refusals``: where items refused here (never sent to a replica) go on record;
    ``admission``: what unary and batch calls pass on entry (``services.frontend.admission``)."""

    def __init__(
        self, batcher: Batcher, settings: ServingSettings, gate: Gate, telemetry: NullTelemetry | None = None,
        refusals: RefusalLog | None = None, *, admission: Admission | None = None,
    ) -> None:
        self._admission = admission or Admission()
        self._batcher = batcher
        self._refusals = refusals
        self._gate = gate
        self._settings = settings
        self._tel = telemetry or NullTelemetry()
        self._decode_one = wire.requests.decode_one

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Authorize": grpc.unary_unary_rpc_method_handler(self.Authorize),
                "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(self.AuthorizeBatch),
                "AuthorizeStream": grpc.stream_stream_rpc_method_handler(self.AuthorizeStream),
            },
        )

    def _refuse(self, rpc: str, caller: bytes, items: Sequence[Item], rows: Any = None) -> None:
        """Put refused items on record (one append; the writer thread does the rest)."""
        if self._refusals is not None and items:
            self._refusals.refused(rpc, caller, items, rows)

    def _refuse_call(self, rpc: str, caller: bytes, code: int, message: str, field: str = "") -> None:
        """A whole call refused before any item was decoded: one row, no ids."""
        self._refuse(rpc, caller, [(b"", int(code), field, message)])

    def _deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        if remaining is None or math.isinf(remaining):
            remaining = self._settings.default_deadline_s
        return time.time() + remaining

    # -- Authorize ---------------------------------------------------------------
    async def Authorize(self, data: bytes, context: Context) -> bytes:
        t0 = time.perf_counter()
        await self._admit("Authorize", context, t0)
        try:
            tel = self._tel
            parent = _traceparent(context) if tel.enabled else None
            if tel.continues(parent) or tel.sampled():
                with tel.span("Authorize", parent=parent) as traceparent:
                    return await self._authorize(data, context, t0, traceparent or "")
            return await self._authorize(data, context, t0, "")
        finally:
            self._admission.leave()

    async def _admit(self, rpc: str, context: Context, t0: float) -> None:
        """Admit the call, or refuse it now, before it costs anything (no identity, no decoding)."""
        why = self._admission.refusal(context.time_remaining())
        if why is None:
            return
        code, message = code_of(why), str(why)
        self._tel.rpc(rpc, grpc_code(code).name, time.perf_counter() - t0)
        self._refuse_call(rpc, b"", code, message)
        await context.abort(grpc_code(code), message, _trailer(int(code), message))

    async def _authorize(self, data: bytes, context: Context, t0: float, trace: str) -> bytes:
        deadline = self._deadline(context)
        try:
            grant = self._gate.caller(context, "Authorize")
        except CreditAuthError as exc:
            await self._abort(context, code_of(exc), str(exc), t0, field=_field(exc), caller=b"")
        who = grant.caller
        if len(data) > MAX_REQUEST_BYTES:
            await self._abort(
                context, Code.INVALID_ARGUMENT, f"AuthorizeRequest over {MAX_REQUEST_BYTES} bytes", t0, caller=who
            )
        try:
            record = self._decode_one(data, deadline, who)
        except wire.WireError as exc:
            await self._abort(context, Code.INVALID_ARGUMENT, f"malformed AuthorizeRequest: {exc}", t0, caller=who)
        except wire.Violation as v:
            e = wire.describe(v)
            await self._abort(context, Code.INVALID_ARGUMENT, str(e), t0, field=e.field, caller=who, app=v.app)
        why = grant.refusal(record)
        if why is not None:
            message = f"{why[0]}: {why[1]}"
            await self._abort(context, Code.PERMISSION_DENIED, message, t0, field=why[0], caller=who, record=record)
        try:
            if deadline <= time.time():
                raise DeadlineExceeded("deadline already passed")
            ans = await self._batcher.submit_one(record, deadline, trace)
        except CreditAuthError as exc:
            await self._abort(context, code_of(exc), str(exc), t0, field=_field(exc), caller=who, record=record)
        enc: wire.Encoder = ans.prepared
        try:
            status = enc.status(ans.start)
            self._tel.outcome(status, enc.decision(ans.start) if status == 0 else 0)
            body = None if status else wire.encode_one(enc, ans.start)
        except CreditAuthError as exc:  # an answer the codec refuses to encode (EncodeError)
            await self._abort(context, code_of(exc), str(exc), t0, field=_field(exc), caller=who, record=record)
        if body is None:  # refused by the replica, which put it on record itself
            await self._abort(context, status, (ans.batch.message or "not decided")[: wire.MAX_TEXT], t0)
        self._tel.rpc("Authorize", "OK", time.perf_counter() - t0)
        return body

    async def _abort(
        self, context: Context, code: int, message: str, t0: float, *, field: str = "",
        caller: bytes | None = None, app: bytes = b"", record: bytes | None = None,
    ) -> NoReturn:
        """Fail the call; on record unless ``caller`` is None (the replica refused it, and logged it)."""
        self._tel.rpc("Authorize", grpc_code(code).name, time.perf_counter() - t0)
        if caller is not None:
            self._refuse("Authorize", caller, [(app, int(code), field, message)], record)
        await abort(context, code, message, field)

    # -- AuthorizeBatch ----------------------------------------------------------
    async def AuthorizeBatch(self, data: bytes, context: Context) -> bytes:
        t0 = time.perf_counter()
        await self._admit("AuthorizeBatch", context, t0)
        try:
            return await self._authorize_batch(data, context, t0)
        finally:
            self._admission.leave()

    async def _authorize_batch(self, data: bytes, context: Context, t0: float) -> bytes:
        deadline = self._deadline(context)
        try:
            grant = self._gate.caller(context, "AuthorizeBatch")
        except CreditAuthError as exc:
            self._refuse_call("AuthorizeBatch", b"", code_of(exc), str(exc), _field(exc))
            await abort(context, code_of(exc), str(exc), _field(exc))
        decoded = await self._decode_batch(data, deadline, grant, context)
        parent = _traceparent(context) if self._tel.enabled else None
        if self._tel.continues(parent) or self._tel.sampled():
            with self._tel.span("AuthorizeBatch", parent=parent, size=decoded.total) as trace:
                body = await self._decide(decoded, deadline, context, trace or "")
        else:
            body = await self._decide(decoded, deadline, context, "")
        self._tel.rpc("AuthorizeBatch", "OK", time.perf_counter() - t0)
        return body

    async def _decode_batch(self, data: bytes, deadline: float, grant: Grant, context: Context) -> wire.DecodedBatch:
        """The call's valid items; the refused ones go on record (the call itself, if malformed)."""
        rpc, who = "AuthorizeBatch", grant.caller
        try:
            d = wire.decode_batch(data, deadline, self._settings.max_batch_request, Code.INVALID_ARGUMENT, caller=who)
        except wire.WireError as exc:
            self._refuse_call(rpc, who, Code.INVALID_ARGUMENT, f"malformed AuthorizeBatchRequest: {exc}")
            await abort(context, Code.INVALID_ARGUMENT, f"malformed AuthorizeBatchRequest: {exc}")
        except CreditAuthError as exc:  # too many items (counted before any was decoded)
            self._refuse_call(rpc, who, code_of(exc), str(exc), _field(exc))
            await abort(context, code_of(exc), str(exc), _field(exc))
        self._refuse(rpc, who, [(e.application_id, e.code, e.field, e.message) for e in d.errors])
        d, denied = _deny(grant, d)
        if denied is not None:
            self._refuse(rpc, who, [(e.application_id, e.code, e.field, e.message) for e in denied[0]], denied[1])
        return d

    async def _decide(self, d: wire.DecodedBatch, deadline: float, context: Context, trace: str) -> bytes:
        """One AuthorizeBatchResponse for a decoded request; a bad item fails only itself."""
        errors = [e.as_tuple() for e in d.errors]
        if len(d.index) == 0:
            return wire.encode_batch(d.total, None, d.index, errors)
        batch = RequestBatch(d.batch.rows, trace)
        try:
            if deadline <= time.time():
                raise DeadlineExceeded("deadline already passed")
            ans = await self._batcher.submit_batch(batch)
        except CreditAuthError as exc:
            return await self._fail_all(d, batch, errors, exc, context)
        self._tel.outcomes(ans.rows())
        try:
            return wire.encode_batch(d.total, ans.prepared, d.index, errors, ans.start)
        except CreditAuthError as exc:  # an answer the codec refuses to encode (EncodeError)
            return await self._fail_all(d, batch, errors, exc, context)

    async def _fail_all(
        self, d: wire.DecodedBatch, batch: RequestBatch, errors: list[tuple[int, bytes, int, str, str, bytes]],
        exc: CreditAuthError, context: Context,
    ) -> bytes:
        """Every scored item of a batch call fails with ``exc`` (the call itself, if nothing else)."""
        code = int(code_of(exc))
        apps = batch.rows["application_id"].tolist()
        self._refuse("AuthorizeBatch", bytes(batch.rows["caller"][0]), [(a, code, "", str(exc)) for a in apps],
                     batch.rows)
        if not errors:  # nothing in the call can be answered: fail the call itself
            await abort(context, code_of(exc), str(exc), _field(exc))
        # No field: the code's own details (ErrorInfo, RetryInfo) are all an item needs.
        errors = errors + [(int(pos), apps[j], code, "", str(exc), b"") for j, pos in enumerate(d.index.tolist())]
        return wire.encode_batch(d.total, None, d.index[:0], errors)

    # -- AuthorizeStream ---------------------------------------------------------
    async def AuthorizeStream(self, request_iterator: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        """Read ahead into windows, keep a few windows in flight, answer in order."""
        try:
            grant = self._gate.caller(context, "AuthorizeStream")
        except CreditAuthError as exc:
            self._refuse_call("AuthorizeStream", b"", code_of(exc), str(exc), _field(exc))
            await abort(context, code_of(exc), str(exc), _field(exc))
        windows: asyncio.Queue[asyncio.Task[list[bytes]] | None] = asyncio.Queue(STREAM_WINDOWS_IN_FLIGHT)
        incoming: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_WINDOW * 4)

        async def read() -> None:
            try:
                async for raw in request_iterator:
                    # An overlong request keeps only enough to be refused by its length.
                    await incoming.put(raw if len(raw) <= MAX_REQUEST_BYTES else raw[: MAX_REQUEST_BYTES + 1])
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
                await windows.put(asyncio.ensure_future(self._window(window, self._deadline(context), grant)))
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

    def _decode_window(
        self, raws: list[bytes], deadline: float, grant: Grant
    ) -> tuple[list[bytes | None], list[bytes], list[int]]:
        """Each request of a window: a record to score, or its error answer right away (on record)."""
        answers: list[bytes | None] = [None] * len(raws)
        records: list[bytes] = []
        where: list[int] = []
        bad: list[Item] = []  # refused undecoded
        denied: list[Item] = []  # refused with a record
        denied_records: list[bytes] = []
        for i, raw in enumerate(raws):
            if len(raw) > MAX_REQUEST_BYTES:
                message = f"AuthorizeRequest longer than {MAX_REQUEST_BYTES} bytes"
                answers[i] = wire.encode_error(b"", Code.INVALID_ARGUMENT, "", message)
                bad.append((b"", Code.INVALID_ARGUMENT, "", message))
                continue
            try:
                record = self._decode_one(raw, deadline, grant.caller)
            except wire.WireError as exc:
                message = f"malformed AuthorizeRequest: {exc}"
                answers[i] = wire.encode_error(b"", Code.INVALID_ARGUMENT, "", message)
                bad.append((b"", Code.INVALID_ARGUMENT, "", message))
                continue  # no record: the next check would read the previous item's
            except wire.Violation as v:
                e = wire.describe(v)
                answers[i] = wire.encode_error(v.app, Code.INVALID_ARGUMENT, e.field, e.message)
                bad.append((v.app, Code.INVALID_ARGUMENT, e.field, e.message))
                continue
            why = grant.refusal(record)
            if why is not None:
                answers[i] = wire.encode_error(_app(record), Code.PERMISSION_DENIED, *why)
                denied.append((_app(record), Code.PERMISSION_DENIED, *why))
                denied_records.append(record)
                continue
            records.append(record)
            where.append(i)
        self._refuse("AuthorizeStream", grant.caller, bad)
        if denied:
            self._refuse("AuthorizeStream", grant.caller, denied, b"".join(denied_records))
        return answers, records, where

    async def _window(self, raws: list[bytes], deadline: float, grant: Grant) -> list[bytes]:
        """Answers for one stream window, in order."""
        answers, records, where = self._decode_window(raws, deadline, grant)
        if records:
            batch = RequestBatch.of_records(records)
            try:
                if deadline <= time.time():
                    raise DeadlineExceeded("deadline already passed")
                ans: Answer = await self._batcher.submit_batch(batch)
                self._tel.outcomes(ans.rows())
                for j, i in enumerate(where):
                    answers[i] = wire.encode_one(ans.prepared, ans.start + j)
            except CreditAuthError as exc:
                code = int(code_of(exc))
                apps = batch.rows["application_id"].tolist()
                self._refuse("AuthorizeStream", grant.caller, [(a, code, "", str(exc)) for a in apps], batch.rows)
                for app, i in zip(apps, where, strict=True):
                    answers[i] = wire.encode_error(app, code, "", str(exc))
        return [a for a in answers if a is not None]


async def abort(context: Context, code: int, message: str, field: str = "") -> NoReturn:
    """Fail the call with ``code``, its details (``services.frontend.details``) in the trailer."""
    await context.abort(grpc_code(code), message, details.trailer(code, message, field))
    raise AssertionError("context.abort returned")


def _field(exc: BaseException) -> str:
    return getattr(exc, "field", "")


_APP = REQUEST_DTYPE.fields["application_id"]  # type: ignore[index]


def _app(record: bytes) -> bytes:
    """A record's application id (NUL padding stripped)."""
    offset = int(_APP[1])
    return record[offset : offset + _APP[0].itemsize].rstrip(b"\0")


def _deny(
    grant: Grant, d: wire.DecodedBatch
) -> tuple[wire.DecodedBatch, tuple[list[wire.ItemError], Any] | None]:
    """The batch without the items this caller may not ask; those become PERMISSION_DENIED
    (also returned, with their records, to go on record)."""
    rows = d.batch.rows
    bad = grant.refused(rows)
    if not bad.any():
        return d, None
    denied = []
    for k in np.flatnonzero(bad).tolist():
        field, message = grant.refusal_of_row(rows[k])
        pos = int(d.index[k])
        denied.append(wire.ItemError(pos, bytes(rows["application_id"][k]), Code.PERMISSION_DENIED,
                                     f"requests[{pos}].{field}", message))
    keep = ~bad
    kept = wire.DecodedBatch(d.total, d.index[keep], RequestBatch(rows[keep], d.batch.trace), d.errors + denied)
    return kept, (denied, rows[bad])


def _traceparent(context: Context) -> str | None:
    """The caller's W3C trace context (``traceparent`` metadata), if it sent one; checked
    by the telemetry before use (services/telemetry.py)."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return value if isinstance(value, str) else None
    return None
