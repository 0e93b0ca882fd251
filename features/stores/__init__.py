"""Online stores, one backend per kind: ``sqlite`` (the embedded default) and ``redis``
(Feast's standard layout, or with ``redis_layout: packed`` the packed one, ``packed``).

``open_backend`` is the only place that branches on the kind of store; everything else
asks the backend it returns for a reader, a writer, the velocity state or the idempotency
records. Feast's layout lives in ``layout``; each kind's package holds its own reader,
writer, velocity state and idempotency store (and their compiled parts and scripts).
Importing this package, or opening a reader, imports neither polars nor the population
generator: only the writers (materialization) need polars.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

from features.stores.base import OnlineReader, StoreBackend, StoreKind, Writer
from features.stores.idempotency import IdempotencyStore, NoIdempotency

if TYPE_CHECKING:
    from features.settings import FeatureSettings

STORE_KINDS: tuple[str, ...] = get_args(StoreKind)

__all__ = [
    "STORE_KINDS",
    "IdempotencyStore",
    "NoIdempotency",
    "OnlineReader",
    "StoreBackend",
    "StoreKind",
    "Writer",
    "open_backend",
]


def open_backend(settings: FeatureSettings) -> StoreBackend:
    """The backend for ``settings.online_store`` (connections open lazily, on first use)."""
    if settings.online_store == "redis" and settings.redis_layout == "packed":
        from features.stores.packed import PackedBackend

        return PackedBackend(settings)
    if settings.online_store == "redis":
        from features.stores.redis import RedisBackend

        return RedisBackend(settings)
    from features.stores.sqlite import SqliteBackend

    return SqliteBackend(settings)
