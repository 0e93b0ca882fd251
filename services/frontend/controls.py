"""The Controls admin service: Set, List and Clear operator controls, for admin callers only.

Served by the front end beside CreditAuthorization on the authorization listeners. Every
call names its caller (a token or a client certificate, as for scoring) and needs the
admin right; the caller's name is the author of what it sets or clears, so the audit
cannot be written in someone else's name. The store calls block (a Redis round trip or a
SQLite transaction), so they run off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from creditauth.v1 import controls_pb2 as cpb
from features import FeatureError, TagCatalog, open_backend
from features.controls import AuditEntry, Control, ControlError, Scope
from features.stores.base import ControlStore
from services.auth import Gate, Grant
from services.auth.settings import SecuritySettings
from services.errors import CreditAuthError, code_of, translate
from services.frontend.status import grpc_code
from services.schema.enums import CHANNELS, PRODUCTS
from services.scoring.controls import Vocabulary
from services.settings import Settings

SERVICE = cpb.DESCRIPTOR.services_by_name["Controls"].full_name
Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

EFFECTS: dict[int, str] = {
    cpb.CONTROL_EFFECT_LIMIT_FACTOR: "limit_factor",
    cpb.CONTROL_EFFECT_APR_ADD: "apr_add",
    cpb.CONTROL_EFFECT_REFER: "refer",
    cpb.CONTROL_EFFECT_DECLINE: "decline",
    cpb.CONTROL_EFFECT_PAUSE: "pause",
}
EFFECT_VALUES: dict[str, int] = {v: k for k, v in EFFECTS.items()}
MAX_HISTORY = 1000


def _enum_names(values: Any, names: tuple[str, ...], path: str) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(values):
        if not 1 <= v <= len(names):
            raise ControlError(f"{path}[{i}]", f"not a named value: {v}")
        out.append(names[v - 1])
    return tuple(out)


def from_proto(m: cpb.Control, ttl_s: float, author: str, now: float) -> Control:
    """The control a request asks for, stamped with its author; ``ControlError`` names a bad field."""
    effect = EFFECTS.get(m.effect)
    if effect is None:
        raise ControlError("effect", f"one of {', '.join(cpb.ControlEffect.keys()[1:])}")
    if ttl_s < 0 or (ttl_s == 0 and m.expires_at_unix <= 0):
        raise ControlError("expires_at_unix", "give an expiry: expires_at_unix or ttl_seconds > 0")
    s = m.scope
    scope = Scope(
        regions=tuple(s.regions), industries=tuple(s.industries),
        products=_enum_names(s.products, PRODUCTS, "scope.products"),
        channels=_enum_names(s.channels, CHANNELS, "scope.channels"),
        tags=tuple(s.tags), merchants=tuple(s.merchant_ids),
    )
    return Control(
        id=m.id, scope=scope, effect=effect, reason_code=m.reason_code, justification=m.justification,
        expires_at=now + ttl_s if ttl_s > 0 else m.expires_at_unix, author=author,
        # proto3 has no "absent": 0 means "not given" for the effects that take no factor.
        limit_factor=m.limit_factor if effect == "limit_factor" or m.limit_factor else 1.0,
        apr_add_bps=m.apr_add_bps, set_at=now,
    )


def to_proto(c: Control, now: float) -> cpb.Control:
    s = c.scope
    scope = cpb.ControlScope(
        regions=s.regions, industries=s.industries, products=[PRODUCTS.index(p) + 1 for p in s.products],
        channels=[CHANNELS.index(ch) + 1 for ch in s.channels], tags=s.tags, merchant_ids=s.merchants,
    )
    return cpb.Control(
        id=c.id, scope=scope, effect=EFFECT_VALUES.get(c.effect, 0), limit_factor=c.limit_factor,
        apr_add_bps=c.apr_add_bps, reason_code=c.reason_code, justification=c.justification,
        expires_at_unix=c.expires_at, author=c.author, set_at_unix=c.set_at, version=c.version,
        expired=not c.active(now),
    )


def change_to_proto(e: AuditEntry, now: float) -> cpb.ControlChange:
    return cpb.ControlChange(action=e.action, version=e.version, at_unix=e.at, author=e.author,
                             justification=e.justification, control=to_proto(e.control, now))


class ControlsServicer:
    def __init__(self, store: ControlStore, security: SecuritySettings, vocabulary: Vocabulary) -> None:
        self._store = store
        self._gate = Gate(security)
        self._vocab = vocabulary

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        def unary(fn: Callable[..., Awaitable[Any]], req: Any, resp: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        return grpc.method_handlers_generic_handler(SERVICE, {
            "Set": unary(self.Set, cpb.SetControlRequest, cpb.SetControlResponse),
            "List": unary(self.List, cpb.ListControlsRequest, cpb.ListControlsResponse),
            "Clear": unary(self.Clear, cpb.ClearControlRequest, cpb.ClearControlResponse),
        })

    async def _admin(self, context: Context) -> Grant:
        try:
            grant = self._gate.admin(context)
        except CreditAuthError as exc:
            await _abort(context, exc)
        return grant

    async def _store_call(self, context: Context, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn)
        except FeatureError as exc:
            await _abort(context, translate(exc))

    async def Set(self, req: cpb.SetControlRequest, context: Context) -> cpb.SetControlResponse:
        grant = await self._admin(context)
        now = time.time()
        try:
            control = from_proto(req.control, req.ttl_seconds, grant.name, now)
            control.check(now)
            self._vocab.check(control)
        except ControlError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"control.{exc.field}: {exc.reason}")
        stored = await self._store_call(context, lambda: self._store.put(control))
        return cpb.SetControlResponse(control=to_proto(stored, now), version=stored.version)

    async def List(self, req: cpb.ListControlsRequest, context: Context) -> cpb.ListControlsResponse:
        await self._admin(context)
        if not 0 <= req.history <= MAX_HISTORY:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"history: must be 0-{MAX_HISTORY}")
        snap = await self._store_call(context, self._store.snapshot)
        history = await self._store_call(context, lambda: self._store.history(req.history)) if req.history else []
        now = time.time()
        shown = [c for c in snap.controls if req.include_expired or c.active(now)]
        return cpb.ListControlsResponse(
            controls=[to_proto(c, now) for c in shown], version=snap.version,
            history=[change_to_proto(e, now) for e in history],
        )

    async def Clear(self, req: cpb.ClearControlRequest, context: Context) -> cpb.ClearControlResponse:
        grant = await self._admin(context)
        if not req.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id: required")
        if not req.justification.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "justification: required")
        now = time.time()
        out = await self._store_call(context, lambda: self._store.clear(req.id, grant.name, req.justification, now))
        if out is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"id: no control {req.id[:64]!r}")
        return cpb.ClearControlResponse(cleared=to_proto(out[0], now), version=out[1])

    def close(self) -> None:
        self._store.close()


def open_controls(settings: Settings) -> ControlsServicer:
    """The admin service over the settings' store; names are checked against the tag
    catalogue where this front end has one (else products and channels only)."""
    try:
        catalog: TagCatalog | None = TagCatalog.load(settings.features)
    except FeatureError:
        catalog = None  # a front-end pod without the data directory: replicas log unknown names
    return ControlsServicer(open_backend(settings.features).controls(), settings.security,
                            Vocabulary.from_catalog(catalog))


async def _abort(context: Context, exc: CreditAuthError) -> NoReturn:
    await context.abort(grpc_code(code_of(exc)), str(exc))
    raise AssertionError("context.abort returned")
