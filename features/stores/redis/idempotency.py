"""Idempotency in Redis: ``SET NX EX`` per decision, one script call per batch.

Records are opaque bytes keyed by application id under ``<project>:idem:<namespace>:``
(the namespace names the record schema, so a changed record layout never reads an old
one); the first replica to decide an application wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from features.errors import OnlineStoreUnavailable
from features.settings import FeatureSettings
from features.stores.idempotency import decode_table, encode_table

_SAVE_LUA = resources.files(__package__).joinpath("idempotency.lua").read_text()


class RedisIdempotency:
    """SET NX EX per decision, in one pipeline per batch."""

    def __init__(self, settings: FeatureSettings, window_s: float, namespace: str = "") -> None:
        import redis

        host, port, db = settings.redis_host_port_db()
        self._client = redis.Redis(
            host=host, port=port, db=db, socket_timeout=settings.timeout_s, socket_connect_timeout=settings.timeout_s
        )
        space = f"{namespace}:" if namespace else ""
        self._prefix = f"{settings.project}:idem:{space}".encode()
        self._window = max(1, int(window_s))
        self._error = redis.RedisError
        self._save_script = self._client.register_script(_SAVE_LUA)

    def _key(self, app_id: str) -> bytes:
        return self._prefix + app_id.encode()

    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        try:
            values: Any = self._client.mget([self._key(a) for a in app_ids])
        except self._error as exc:
            raise OnlineStoreUnavailable(f"idempotency store unreachable: {exc}") from exc
        return {a: v for a, v in zip(app_ids, values, strict=True) if v is not None}

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        try:
            # One EVAL per batch: SET NX EX for every id server-side, returning the
            # positions another replica had already decided.
            lost_at: Any = self._save_script(
                keys=[self._key(a) for a in app_ids], args=[self._window, *records]
            )
        except self._error as exc:
            raise OnlineStoreUnavailable(f"idempotency store unreachable: {exc}") from exc
        lost = [app_ids[int(i) - 1] for i in lost_at]
        return self.lookup(lost) if lost else {}

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None:
        try:
            self._client.set(self._prefix + b"reasons:" + policy_version.encode(), encode_table(table))
        except self._error as exc:
            raise OnlineStoreUnavailable(f"idempotency store unreachable: {exc}") from exc

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None:
        raw: Any = self._client.get(self._prefix + b"reasons:" + policy_version.encode())
        return decode_table(raw) if raw else None

    def close(self) -> None:
        self._client.close()
