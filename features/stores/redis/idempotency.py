"""Idempotency in Redis: ``SET NX EX`` per decision, one script call per batch.

Records are opaque bytes keyed by application id under ``<project>:idem:<namespace>:``
(the namespace names the record schema, so a changed record layout never reads an old
one); the first replica to decide an application wins. Everything goes over the
backend's shared ``RedisClient``, so a failure is the same typed error, within the same
deadline, as a feature read's.

On a Redis Cluster (key names unchanged: each record is its own key, so none needs a
hash tag) a lookup is one ``GET`` per id and a save one ``SET NX EX`` per id, pipelined per
node; a save retried after a lost connection may find its own record, which is the same
decision, so retrying it is safe.
"""

from __future__ import annotations

from collections.abc import Sequence

from features.errors import FeatureDataError
from features.settings import FeatureSettings
from features.stores.idempotency import decode_table, encode_table
from features.stores.redis.client import Script
from features.stores.redis.cluster import AnyClient, ClusterClient

SCRIPT = Script.load(__package__, "idempotency.lua")


class RedisIdempotency:
    """MGET per lookup, one ``EVALSHA`` of ``idempotency.lua`` per save."""

    def __init__(self, client: AnyClient, settings: FeatureSettings, window_s: float, namespace: str = "") -> None:
        self._client = client
        space = f"{namespace}:" if namespace else ""
        self._prefix = f"{settings.project}:idem:{space}".encode()
        self._window = str(max(1, int(window_s))).encode()

    def _key(self, app_id: str) -> bytes:
        return self._prefix + app_id.encode()

    def lookup(self, app_ids: Sequence[str]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        if isinstance(self._client, ClusterClient):
            got = self._client.commands([[b"GET", self._key(a)] for a in app_ids], context="idempotency lookup")
            return {a: v for a, v in zip(app_ids, got, strict=True) if isinstance(v, bytes)}
        values = self._client.command(b"MGET", *(self._key(a) for a in app_ids), context="idempotency lookup")
        if not isinstance(values, list) or len(values) != len(app_ids):
            raise FeatureDataError(f"idempotency lookup returned {values!r:.200}")
        return {a: v for a, v in zip(app_ids, values, strict=True) if isinstance(v, bytes)}

    def save(self, app_ids: Sequence[str], records: Sequence[bytes]) -> dict[str, bytes]:
        if not app_ids:
            return {}
        if isinstance(self._client, ClusterClient):
            won = self._client.commands(
                [[b"SET", self._key(a), r, b"NX", b"EX", self._window] for a, r in zip(app_ids, records, strict=True)],
                context="idempotency save",
            )
            lost = [a for a, ok in zip(app_ids, won, strict=True) if ok is None]
            return self.lookup(lost) if lost else {}
        # SET NX EX for every id server-side; the script returns the (1-based) positions
        # another replica had already decided, whose records we then read back.
        lost_at = self._client.eval_script(
            SCRIPT, [self._key(a) for a in app_ids], [self._window, *records], context="idempotency save"
        )
        if not isinstance(lost_at, list):
            raise FeatureDataError(f"idempotency save returned {lost_at!r:.200}")
        lost = [app_ids[int(i) - 1] for i in lost_at]
        return self.lookup(lost) if lost else {}

    def put_reasons(self, policy_version: str, table: tuple[tuple[str, str], ...]) -> None:
        self._client.command(b"SET", self._reasons_key(policy_version), encode_table(table).encode(),
                             context="reason table")

    def reasons(self, policy_version: str) -> tuple[tuple[str, str], ...] | None:
        raw = self._client.command(b"GET", self._reasons_key(policy_version), context="reason table")
        return decode_table(raw) if isinstance(raw, bytes) and raw else None

    def _reasons_key(self, policy_version: str) -> bytes:
        return self._prefix + b"reasons:" + policy_version.encode()

    def close(self) -> None:
        self._client.close()
