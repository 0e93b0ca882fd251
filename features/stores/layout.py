"""Feast's online-store layout, in one place.

Feast is the system of record, so every byte this project reads or writes in an online
store is in the layout Feast itself reads and writes (tests compare both, value by
value and byte by byte). This module is the only one that knows that layout:

- entity keys: the serialized ``EntityKeyProto`` (serialization version 3) of the
  ``merchant_id`` join key (built in C by ``_codec.entity_keys``);
- SQLite: one table per feature view, ``<project>_<view>``, one row per entity key and
  feature name (``value`` a serialized ``feast.types.Value``, ``event_ts`` in seconds);
- Redis: one hash per entity, keyed by the entity key followed by the project name;
  each field is the 4-byte little-endian murmur3 of ``"view:feature"``, and
  ``_ts:view`` holds the view's event time as a ``google.protobuf.Timestamp``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import mmh3

from features import catalog
from features.stores import _codec


def entity_keys(merchant_ids: Sequence[str] | Sequence[bytes]) -> list[bytes]:
    """Feast's serialized entity keys of ``merchant_ids`` (the ``merchant_id`` join key)."""
    return _codec.entity_keys(catalog.JOIN_KEY, list(merchant_ids))  # type: ignore[arg-type]


def table(project: str, view: catalog.FeatureView) -> str:
    """The SQLite table Feast keeps ``view`` in."""
    return f"{project}_{view.name}"


def tables(project: str, views: Sequence[catalog.FeatureView] = catalog.ALL_VIEWS) -> list[str]:
    return [table(project, v) for v in views]


def redis_key(entity_key: bytes, project: str) -> bytes:
    """The Redis hash Feast keeps one entity's rows in."""
    return entity_key + project.encode()


def field_hash(view: str, feature: str) -> bytes:
    """Feast's Redis field name for ``view:feature`` (murmur3_32, little-endian)."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def ts_field(view: str) -> bytes:
    """Feast's Redis field holding a view's event timestamp."""
    return f"_ts:{view}".encode()
