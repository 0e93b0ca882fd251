"""The packed Redis layout: one string per (entity, feature view).

Feast's standard Redis layout keeps one hash per entity with one field per feature, so a
read of 95 features is an ``HMGET`` of 100 fields and costs redis-server ~20 µs per
merchant. Here each view of an entity is one Redis string, read with one ``GET``-style
lookup (``MGET`` of a merchant's views):

    key   = "{" <serialized entity key> "}:" <project> ":" <view>
    value = u8 version (1) | u32 schema id | i64 event time (µs since the epoch)
            | the view's values as a serialized ``feast.types.RepeatedValue``

(little-endian). The braces are a Redis Cluster hash tag: every view of one merchant
lands in the same slot, so a merchant's ``MGET`` is valid on a cluster. (Should an
entity key contain ``}``, the tag ends there instead: still the same for every view of
that entity, so still one slot; only the spread over slots gets worse.)

The values are in the view's schema order, each a length-delimited ``Value`` (a null
value is an empty one, as in Feast), so the SDK side decodes them with one
``RepeatedValue.FromString`` and the compiled reader in one pass over the bytes. Values
carry no names, so the schema id, a murmur3 of the view's name and its (name, type)
list, says which definition wrote them: a value written under another definition is
refused rather than read into the wrong columns.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import mmh3

from features import catalog

VERSION = 1
HEADER = struct.Struct("<BIq")
HEADER_BYTES = HEADER.size  # 13
# Feast's ValueType names of the catalogue's kinds (what a Feast Field's dtype maps to).
VALUE_TYPES: dict[str, str] = {"float32": "FLOAT", "int64": "INT64", "bytes": "BYTES"}


def schema_id(view: str, fields: Iterable[tuple[str, str]]) -> int:
    """The id of a view definition: ``fields`` are (name, Feast ValueType name) in schema order."""
    spec = view + "|" + ",".join(f"{name}:{vtype}" for name, vtype in fields)
    return int(mmh3.hash(spec, signed=False))


def catalog_schema_id(view: catalog.FeatureView) -> int:
    return schema_id(view.name, ((f, VALUE_TYPES[k]) for f, k in view.fields))


def key_prefix(entity_key: bytes) -> bytes:
    return b"{" + entity_key + b"}:"


def view_suffix(project: str, view: str) -> bytes:
    return f"{project}:{view}".encode()


def key(entity_key: bytes, project: str, view: str) -> bytes:
    """The Redis key of one entity's row of ``view``."""
    return key_prefix(entity_key) + view_suffix(project, view)


def scan_pattern(project: str, view: str | None = None) -> bytes:
    """A ``SCAN MATCH`` pattern for the project's packed keys (of one view, or all)."""
    return b"{*}:" + (view_suffix(project, view) if view else project.encode() + b":*")


def pack(schema: int, event_us: int, values: Sequence[bytes]) -> bytes:
    """One packed value from serialized ``Value``s (``b""`` for null) in schema order."""
    body = b"".join(b"\x0a" + _varint(len(v)) + v for v in values)
    return HEADER.pack(VERSION, schema, event_us) + body


def unpack_header(blob: bytes) -> tuple[int, int]:
    """``(schema id, event µs)`` of a packed value; ValueError if it is not one."""
    if len(blob) < HEADER_BYTES:
        raise ValueError(f"packed value of {len(blob)} bytes is shorter than its header")
    version, schema, event_us = HEADER.unpack_from(blob)
    if version != VERSION:
        raise ValueError(f"packed value version {version}, this reader knows {VERSION}")
    return schema, event_us


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)
