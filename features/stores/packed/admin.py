"""Cleanup of the packed layout's keys (benchmarks and tests), over the backend's client."""

from __future__ import annotations

from features.errors import FeatureDataError
from features.stores.packed import layout
from features.stores.redis.client import RedisClient

_BATCH = 10_000
_ADMIN_TIMEOUT_S = 10.0


def drop_packed(client: RedisClient, project: str) -> int:
    """Unlink every packed row of ``project`` (``{<entity key>}:<project>:*``); returns how many."""
    timeout = max(client.timeout_s, _ADMIN_TIMEOUT_S)
    dropped = 0
    cursor = b"0"
    while True:
        reply = client.command(b"SCAN", cursor, b"MATCH", layout.scan_pattern(project), b"COUNT",
                               str(_BATCH).encode(), timeout_s=timeout, context="SCAN")
        if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], list)):
            raise FeatureDataError(f"SCAN returned {reply!r:.200}")
        cursor, keys = reply
        if keys:
            client.command(b"UNLINK", *keys, timeout_s=timeout, context="UNLINK")
            dropped += len(keys)
        if cursor == b"0":
            return dropped
