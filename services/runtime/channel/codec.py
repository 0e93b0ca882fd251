"""Wire format for batches: a small JSON header and raw array buffers, no pickle.

    frame   := u32 length | u64 call id | u8 kind | payload
    payload := u32 header length | header JSON | buffers

The header lists each array (name, dtype, shape, byte offset) and the plain
metadata. Decoding is zero-copy (``np.frombuffer``). Nothing in a frame is
executable, so a socket that accepts frames is no more dangerous than one that
accepts protobufs.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any, TypeVar

import numpy as np

from services.scoring import RequestBatch, ResponseBatch

FRAME = struct.Struct("<IQB")  # length of the rest, call id, kind
KIND_SCORE = 1
KIND_RESULT = 2
KIND_ERROR = 3
_U32 = struct.Struct("<I")

T = TypeVar("T", RequestBatch, ResponseBatch)


def encode(obj: RequestBatch | ResponseBatch, extra: dict[str, Any] | None = None) -> list[bytes | memoryview]:
    """Payload parts (header + buffers), ready for ``writelines``."""
    arrays: list[list[Any]] = []
    meta: dict[str, Any] = dict(extra or {})
    buffers: list[bytes | memoryview] = []
    offset = 0
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            arrays.append([f.name, a.dtype.str, list(a.shape), offset])
            buffers.append(a.data.cast("B"))
            offset += a.nbytes
        elif isinstance(value, bytes):
            arrays.append([f.name, "bytes", [len(value)], offset])
            buffers.append(value)
            offset += len(value)
        else:
            meta[f.name] = value
    header = json.dumps({"a": arrays, "m": meta}, separators=(",", ":")).encode()
    return [_U32.pack(len(header)), header, *buffers]


def decode(kind: type[T], payload: memoryview) -> tuple[T, dict[str, Any]]:
    """The object and any extra metadata that was not a field."""
    (hlen,) = _U32.unpack_from(payload, 0)
    header = json.loads(bytes(payload[4 : 4 + hlen]))
    body = payload[4 + hlen :]
    values: dict[str, Any] = {}
    for name, dtype, shape, offset in header["a"]:
        if dtype == "bytes":
            values[name] = bytes(body[offset : offset + shape[0]])
        else:
            dt = np.dtype(dtype)
            count = int(np.prod(shape)) if shape else 1
            values[name] = np.frombuffer(body, dtype=dt, count=count, offset=offset).reshape(shape)
    meta = header["m"]
    names = {f.name for f in dataclasses.fields(kind)}
    for name in names & meta.keys():
        v = meta.pop(name)
        # JSON turns tuples into lists; the dataclasses hold tuples.
        values[name] = tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
    return kind(**values), meta


def frame_header(length: int, call_id: int, kind: int) -> bytes:
    return FRAME.pack(length + 9, call_id, kind)
