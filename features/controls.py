"""Operator controls: what an operator sets, how a store keeps it, and a replica's cached view.

A control is an operator's brake on a slice of the book: a scope (regions, industries,
products, channels, tags, a merchant list: every dimension given must match, any value
within one), an effect (a limit factor, an APR add-on, refer, decline, pause a product), a
reason code that every decision it touches carries, an author, a justification and an
expiry. The store (``features.stores.base.ControlStore``) keeps the active set under one
version counter, an append-only audit of every change, and a registry of reason entries
whose positions never change, so a reason index written into a decision record reads the
same on every replica and after restarts.

``ControlCache`` is a replica's view: loaded once at start, refreshed on the store's
change notification and by a bounded poll of the version (one cheap round trip), never
per request. Scoring reads ``cache.snapshot``, an attribute.

The feature layer checks the shape of a control (ids, codes, bounds, expiry); names of
products, channels, regions, industries and tags are checked by the services, which know
the API's enumerations and the tag catalogue.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from features.errors import FeatureConfigError, FeatureError

if TYPE_CHECKING:
    from features.stores.base import ControlStore

log = logging.getLogger(__name__)

Effect = Literal["limit_factor", "apr_add", "refer", "decline", "pause"]
EFFECTS: tuple[str, ...] = get_args(Effect)
SCOPES: tuple[str, ...] = ("regions", "industries", "products", "channels", "tags", "merchants")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Control reason codes are recognisable in any decision, and never collide with the policy's.
_CODE = re.compile(r"CTRL_[A-Z0-9_]{1,43}")
MAX_JUSTIFICATION = 300
MAX_AUTHOR = 64
MAX_VALUES = 64  # per scope dimension (regions, tags, ...)
MAX_MERCHANTS = 10_000
MAX_APR_ADD_BPS = 5_000
MAX_TTL_S = 366 * 86400.0


class ControlError(FeatureConfigError):
    """A control that cannot be set; ``field`` names the offending field (``scope.tags[2]``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.reason = message


@dataclass(frozen=True)
class Scope:
    """Which decisions a control touches: every non-empty dimension must match."""

    regions: tuple[str, ...] = ()
    industries: tuple[str, ...] = ()
    products: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    merchants: tuple[str, ...] = ()

    def dimensions(self) -> dict[str, tuple[str, ...]]:
        return {name: getattr(self, name) for name in SCOPES}


@dataclass(frozen=True)
class Control:
    id: str
    scope: Scope
    effect: str
    reason_code: str
    justification: str
    expires_at: float  # Unix seconds
    author: str = ""
    limit_factor: float = 1.0  # limit_factor: approved limits are multiplied by it, 0 < f <= 1
    apr_add_bps: int = 0  # apr_add: added to the APR of every priced decision
    # Set by the store: when, under which version, and the reason entry's position.
    set_at: float = 0.0
    version: int = 0
    reason_slot: int = -1

    def active(self, now: float) -> bool:
        return self.expires_at > now

    @property
    def reason_description(self) -> str:
        """The reason entry's text: it names the control and who set it."""
        return f"{self.justification} (operator control {self.id}, set by {self.author})"

    def check(self, now: float) -> None:
        """Raise ``ControlError`` naming the first field that is wrong."""
        _check_identity(self)
        _check_effect(self)
        _check_scope(self.scope)
        if not self.expires_at > now:
            raise ControlError("expires_at", "must be in the future")
        if self.expires_at - now > MAX_TTL_S:
            raise ControlError("expires_at", f"at most {MAX_TTL_S / 86400:.0f} days ahead")

    # -- what the store keeps -------------------------------------------------------
    def body(self) -> str:
        """The stored JSON (version and reason slot are the store's, kept beside it)."""
        doc = asdict(self)
        del doc["version"], doc["reason_slot"]
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_body(cls, body: str | bytes, version: int, slot: int) -> Control:
        try:
            doc = json.loads(body)
            scope = Scope(**{k: tuple(str(v) for v in doc["scope"].get(k, ())) for k in SCOPES})
            return cls(
                id=str(doc["id"]), scope=scope, effect=str(doc["effect"]), reason_code=str(doc["reason_code"]),
                justification=str(doc["justification"]), expires_at=float(doc["expires_at"]),
                author=str(doc["author"]), limit_factor=float(doc["limit_factor"]),
                apr_add_bps=int(doc["apr_add_bps"]), set_at=float(doc["set_at"]), version=version,
                reason_slot=slot,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ControlError("control", f"stored control unreadable: {exc}") from None

    def stamped(self, author: str, now: float) -> Control:
        return replace(self, author=author, set_at=now)


def _check_identity(c: Control) -> None:
    if not _ID.fullmatch(c.id):
        raise ControlError("id", "1-64 characters of A-Z a-z 0-9 . _ : -")
    if not _CODE.fullmatch(c.reason_code):
        raise ControlError("reason_code", "CTRL_ then 1-43 of A-Z 0-9 _ (e.g. CTRL_REGION_LOCKDOWN)")
    if not c.justification.strip() or len(c.justification) > MAX_JUSTIFICATION:
        raise ControlError("justification", f"required, at most {MAX_JUSTIFICATION} characters")
    if not c.author or len(c.author) > MAX_AUTHOR:
        raise ControlError("author", f"required, at most {MAX_AUTHOR} characters")


def _check_effect(c: Control) -> None:
    if c.effect not in EFFECTS:
        raise ControlError("effect", f"one of {', '.join(EFFECTS)}")
    if c.effect == "limit_factor" and not 0.0 < c.limit_factor <= 1.0:
        raise ControlError("limit_factor", "must be in (0, 1]: controls brake, they never raise limits")
    if c.effect != "limit_factor" and c.limit_factor != 1.0:
        raise ControlError("limit_factor", "only with effect limit_factor")
    if c.effect == "apr_add" and not 0 < c.apr_add_bps <= MAX_APR_ADD_BPS:
        raise ControlError("apr_add_bps", f"must be 1-{MAX_APR_ADD_BPS}")
    if c.effect != "apr_add" and c.apr_add_bps != 0:
        raise ControlError("apr_add_bps", "only with effect apr_add")
    if c.effect == "pause" and not c.scope.products:
        raise ControlError("scope.products", "pause needs the products it pauses")


def _check_scope(scope: Scope) -> None:
    dims = scope.dimensions()
    if not any(dims.values()):
        raise ControlError("scope", f"at least one of {', '.join(SCOPES)}")
    for name, values in dims.items():
        limit = MAX_MERCHANTS if name == "merchants" else MAX_VALUES
        if len(values) > limit:
            raise ControlError(f"scope.{name}", f"at most {limit} values")
        for i, v in enumerate(values):
            if not v or len(v) > 128 or (name == "merchants" and not _ID.fullmatch(v)):
                raise ControlError(f"scope.{name}[{i}]", f"not a valid value: {v[:64]!r}")


@dataclass(frozen=True)
class AuditEntry:
    """One change: ``set`` (the control as set) or ``clear`` (the control as it was)."""

    action: Literal["set", "clear"]
    version: int
    at: float
    author: str
    justification: str
    control: Control


@dataclass(frozen=True)
class ControlSnapshot:
    """The store's controls at one version, and its reason registry (slot -> (code, text))."""

    version: int = 0
    controls: tuple[Control, ...] = ()
    reasons: tuple[tuple[str, str], ...] = ()

    def active(self, now: float) -> tuple[Control, ...]:
        return tuple(c for c in self.controls if c.active(now))


EMPTY = ControlSnapshot()


def clear_body(author: str, justification: str, now: float) -> str:
    """The audit record of a clear (the store appends the cleared control's own record)."""
    return json.dumps({"author": author, "justification": justification, "at": now}, separators=(",", ":"))


def audit_of(action: str, version: int, extra: str | bytes, control: Control) -> AuditEntry:
    """An audit entry from what a store kept: ``extra`` is the clear body for a clear."""
    if action == "clear":
        doc: dict[str, Any] = json.loads(extra)
        return AuditEntry("clear", version, float(doc["at"]), str(doc["author"]), str(doc["justification"]), control)
    return AuditEntry("set", version, control.set_at, control.author, control.justification, control)


class ControlCache:
    """A replica's current controls: refreshed on notification and by polling, never per request.

    ``start`` loads once (a failure leaves the empty set and keeps retrying), then a thread
    waits for a notification or ``poll_s`` and checks the version (one round trip); only a
    changed version loads the set. A store that cannot be read keeps the last set in force.
    """

    def __init__(self, store: ControlStore, *, poll_s: float | None = None) -> None:
        """``store``: owned from here on (``close`` closes it)."""
        self._store = store
        self.poll_s = store.poll_s if poll_s is None else poll_s
        self.snapshot: ControlSnapshot = EMPTY
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.refreshes = 0  # loads of a changed set (tests and benchmarks read it)
        self.failures = 0
        # When the store last answered a version check (monotonic; None: never, e.g. a
        # replica started while the store was down): how current the set in force is known to be.
        self.checked_at: float | None = None

    def start(self) -> ControlCache:
        self._safe_refresh()
        self._watch = self._store.watch(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="controls-cache", daemon=True)
        self._thread.start()
        return self

    def refresh(self) -> bool:
        """Check the version; load the set if it changed. True if a new set was loaded."""
        version = self._store.version()
        if version == self.snapshot.version:
            self.checked_at = time.monotonic()
            return False
        snap = self._store.snapshot()
        self.checked_at = time.monotonic()
        with self._changed:
            # Versions only grow; a lower one means the store was reset (``drop_project``).
            if snap.version > self.snapshot.version or version < self.snapshot.version:
                self.snapshot = snap
                self.refreshes += 1
            self._changed.notify_all()
        return True

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the store last confirmed the set in force (inf: it never did). A
        set older than the policy allows is a missing input (its degraded mode applies):
        a brake set during the outage may not be in it."""
        if self.checked_at is None:
            return float("inf")
        return (time.monotonic() if now is None else now) - self.checked_at

    def wait_for(self, version: int, timeout_s: float) -> bool:
        """Block until the cached version is at least ``version`` (tests; bounded)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.snapshot.version < version:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _safe_refresh(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # the refresher must outlive any one failure: it is the brake's wire
            self.failures += 1
            if self.failures == 1 or self.failures % 60 == 0:  # keep the log readable while the store is down
                log.warning("operator controls not refreshed (the last set stays in force): %s", exc,
                            exc_info=not isinstance(exc, FeatureError))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self._safe_refresh()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._watch is not None:
            self._watch.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._store.close()  # the cache owns the store part it was given

