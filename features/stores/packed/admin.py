"""Cleanup of the packed layout's keys (benchmarks and tests), over the backend's client."""

from __future__ import annotations

from features.stores.packed import layout
from features.stores.redis.admin import unlink_matching
from features.stores.redis.cluster import AnyClient


def drop_packed(client: AnyClient, project: str) -> int:
    """Unlink every packed row of ``project`` (``{<entity key>}:<project>:*``); returns how many."""
    return unlink_matching(client, layout.scan_pattern(project))
