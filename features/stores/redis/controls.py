"""Operator controls in Redis: a hash, a version counter, an audit list, pub/sub on change.

Keys under ``<project>:controls:``: ``active`` (hash: id -> ``"<version> <slot> <json>"``),
``version`` (the counter), ``reasons`` (list: the reason registry, a slot is a position) and
``slots`` (hash: reason entry -> slot), ``audit`` (list of ``"set <record>"`` /
``"clear <version> <clear json>\\n<record>"``). A change is one script call, so the set, the
counter, the registry, the audit and the ``PUBLISH`` on ``<project>:controls:changed``
happen together; a read of the whole set is one script call too, so it sees one version.

The subscriber is one connection of its own (a subscribed connection can do nothing else)
on a thread that blocks reading messages; each message, and each (re)subscription (which
may follow missed messages), calls ``notify``. ``close`` wakes it with a message on a
channel of its own, so no read has to time out.

On a Redis Cluster the keys are ``{<project>:controls}:...`` (one hash tag: each script
spans several of them, and Redis runs a script only on keys of one slot); the channel
keeps its name (a cluster delivers a ``PUBLISH`` to subscribers on every node).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import threading
from collections.abc import Callable

from features.controls import AuditEntry, Control, ControlSnapshot, audit_of, clear_body
from features.errors import FeatureDataError, FeatureError
from features.settings import FeatureSettings
from features.stores.redis import _resp, _resp_build
from features.stores.redis.client import RespConnection, Script
from features.stores.redis.cluster import AnyClient, ClusterClient

log = logging.getLogger(__name__)
_POLL_S = 1.0  # the fallback: notifications carry the change within milliseconds
_IDLE_S = 60.0  # a subscription silent this long is re-made (a half-open connection ends)
_RETRY_S = 1.0
_ADMIN_TIMEOUT_S = 10.0
_STOP_S = 5.0
_WATCHES = itertools.count(1)


def _script(body: bytes) -> Script:
    return Script(body, hashlib.sha1(body).hexdigest().encode())


# KEYS: active version reasons slots audit; ARGV: id, reason key, reason json, body, channel.
_PUT = _script(b"""
local slot = redis.call('HGET', KEYS[4], ARGV[2])
if not slot then
  slot = tostring(redis.call('RPUSH', KEYS[3], ARGV[3]) - 1)
  redis.call('HSET', KEYS[4], ARGV[2], slot)
end
local v = redis.call('INCR', KEYS[2])
local rec = v .. ' ' .. slot .. ' ' .. ARGV[4]
redis.call('HSET', KEYS[1], ARGV[1], rec)
redis.call('RPUSH', KEYS[5], 'set ' .. rec)
redis.call('PUBLISH', ARGV[5], v)
return {v, tonumber(slot)}
""")
# KEYS: active version audit; ARGV: id, clear json, channel.
_CLEAR = _script(b"""
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local v = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[3], 'clear ' .. v .. ' ' .. ARGV[2] .. '\\n' .. rec)
redis.call('PUBLISH', ARGV[3], v)
return {v, rec}
""")
# KEYS: version active reasons: the whole set at one version.
_READ = _script(b"""
return {redis.call('GET', KEYS[1]) or '0', redis.call('HGETALL', KEYS[2]), redis.call('LRANGE', KEYS[3], 0, -1)}
""")


def _record(rec: bytes) -> Control:
    version, slot, body = rec.split(b" ", 2)
    return Control.from_body(body, int(version), int(slot))


class RedisControls:
    poll_s = _POLL_S

    def __init__(self, client: AnyClient, settings: FeatureSettings) -> None:
        self._client = client
        self._settings = settings
        base = f"{settings.project}:controls:"
        keys = f"{{{settings.project}:controls}}:" if isinstance(client, ClusterClient) else base
        self._active, self._version = (keys + "active").encode(), (keys + "version").encode()
        self._reasons, self._slots = (keys + "reasons").encode(), (keys + "slots").encode()
        self._audit = (keys + "audit").encode()
        self.channel = (base + "changed").encode()

    def version(self) -> int:
        raw = self._client.command(b"GET", self._version, context="controls version")
        return int(raw) if isinstance(raw, bytes) else 0

    def snapshot(self) -> ControlSnapshot:
        reply = self._client.eval_script(_READ, [self._version, self._active, self._reasons], [],
                                         context="controls read")
        if not (isinstance(reply, list) and len(reply) == 3):
            raise FeatureDataError(f"controls read returned {reply!r:.200}")
        version, flat, reasons = reply
        controls = tuple(sorted((_record(flat[i + 1]) for i in range(0, len(flat), 2)), key=lambda c: c.id))
        registry = tuple((str(code), str(text)) for code, text in (json.loads(r) for r in reasons))
        return ControlSnapshot(int(version), controls, registry)

    def put(self, control: Control) -> Control:
        entry = [control.reason_code, control.reason_description]
        keys = [self._active, self._version, self._reasons, self._slots, self._audit]
        args = [control.id.encode(), "\n".join(entry).encode(), json.dumps(entry).encode(), control.body().encode(),
                self.channel]
        reply = self._client.eval_script(_PUT, keys, args, timeout_s=_ADMIN_TIMEOUT_S, context="controls set")
        if not (isinstance(reply, list) and len(reply) == 2):
            raise FeatureDataError(f"controls set returned {reply!r:.200}")
        return Control.from_body(control.body(), int(reply[0]), int(reply[1]))

    def clear(self, control_id: str, author: str, justification: str, now: float) -> tuple[Control, int] | None:
        args = [control_id.encode(), clear_body(author, justification, now).encode(), self.channel]
        reply = self._client.eval_script(_CLEAR, [self._active, self._version, self._audit], args,
                                         timeout_s=_ADMIN_TIMEOUT_S, context="controls clear")
        if reply is None:
            return None
        if not (isinstance(reply, list) and len(reply) == 2):
            raise FeatureDataError(f"controls clear returned {reply!r:.200}")
        return _record(reply[1]), int(reply[0])

    def history(self, limit: int) -> list[AuditEntry]:
        raw = self._client.command(b"LRANGE", self._audit, str(-max(1, limit)).encode(), b"-1",
                                   timeout_s=_ADMIN_TIMEOUT_S, context="controls audit")
        if not isinstance(raw, list):
            raise FeatureDataError(f"controls audit returned {raw!r:.200}")
        out = []
        for line in raw:
            action, rest = line.split(b" ", 1)
            if action == b"set":
                control = _record(rest)
                out.append(audit_of("set", control.version, b"", control))
            else:
                head, rec = rest.split(b"\n", 1)
                version, extra = head.split(b" ", 1)
                out.append(audit_of("clear", int(version), extra, _record(rec)))
        return out

    def watch(self, notify: Callable[[], None]) -> _Subscriber:
        return _Subscriber(self._client, self._settings, self.channel, notify).start()

    def close(self) -> None:
        self._client.close()


class _Subscriber:
    """``SUBSCRIBE`` on a connection of its own; every message calls ``notify``."""

    def __init__(self, client: AnyClient, settings: FeatureSettings, channel: bytes,
                 notify: Callable[[], None]) -> None:
        self._client = client
        self._channels = [channel, channel + f":wake:{client.name}:{next(_WATCHES)}".encode()]
        self._notify = notify
        self._conn = RespConnection(settings, name=client.name, config=client.config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="controls-watch", daemon=True)
        self.subscribed = threading.Event()  # set while subscribed (tests wait on it)

    def start(self) -> _Subscriber:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # whatever it was, the thread lives on: the cache also polls
                self.subscribed.clear()
                if not self._stop.is_set():
                    # Debug: a subscription idle for _IDLE_S ends this way too, by design.
                    log.debug("controls subscription ended, re-subscribing: %s", exc)
                    self._stop.wait(_RETRY_S)
        self._conn.close()

    def _listen(self) -> None:
        command = _resp_build.encode_command([b"SUBSCRIBE", *self._channels])
        self._conn.call(command, _resp.ReplyCollector(len(self._channels)))
        self.subscribed.set()
        self._notify()  # changes made while we were not subscribed: the cache checks the version
        while not self._stop.is_set():
            self._conn.receive(_resp.ReplyCollector(1), timeout_s=_IDLE_S)
            self._notify()

    def close(self) -> None:
        self._stop.set()
        # Wake the blocked read with a message of our own; if the store is gone, the read
        # fails on its own and the loop sees the stop.
        with contextlib.suppress(FeatureError):
            self._client.command(b"PUBLISH", self._channels[1], b"stop", context="controls unsubscribe")
        self._thread.join(timeout=_STOP_S)
        if self._thread.is_alive():  # a daemon thread: it ends at its next read's deadline
            log.warning("controls subscriber did not stop within %.0f s", _STOP_S)
