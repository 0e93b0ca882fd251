"""Wire format of the direct channel: framed operations, a small JSON header and raw buffers, no pickle.

    frame   := u32 length | u64 call id | u8 op | payload      (length counts call id, op, payload)
    payload := u32 header length | header JSON | buffers        (SCORE, and RESULT of a SCORE)
             | JSON object                                      (control ops, their RESULT, ERROR)

A batch's header lists each array (name, dtype, shape, byte offset) and the plain
metadata; a structured array's dtype travels as its ``dtype.descr``. Decoding is
zero-copy (``np.frombuffer``) and checked first: only plain numeric, bytes and string
kinds are rebuilt (never objects), and every array must lie inside the payload.
Nothing in a frame is executable, so a socket that accepts frames is no more
dangerous than one that accepts protobufs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from services.errors import CreditAuthError, error_for
from services.schema.codes import Code

FRAME = struct.Struct("<IQB")  # length of the rest, call id, op
_AFTER_LENGTH = FRAME.size - 4  # call id + op: counted in the length field
_U32 = struct.Struct("<I")
# Big enough for the largest batch the front end sends (records of a few hundred bytes),
# small enough that a corrupt or hostile length cannot make a process allocate gigabytes.
MAX_FRAME = 64 << 20
_ALIGN = 8  # buffers start on 8-byte boundaries, so decoded columns are aligned
# Kinds a decoded dtype may have: bool, integers, floats, complex, bytes, str, and void
# only as a record (structured) or padding inside one.
_PLAIN_KINDS = frozenset("biufcSU")
_MAX_DEPTH = 4  # nesting of structured dtypes
_SCALAR = re.compile(r"[<>|=]?[biufcSU?][0-9]{0,6}")
_PAD = re.compile(r"\|?V[0-9]{1,6}")

Part = bytes | memoryview


class Op(enum.IntEnum):
    """What a frame asks for (or answers). Replies carry the call id of their request."""

    SCORE = 1  # a request batch; answered by RESULT (a decision batch) or ERROR
    RESULT = 2
    ERROR = 3  # JSON {"code": services.schema.codes.Code, "message": str}
    PING = 4  # liveness; answered by RESULT {"ok": true}
    INFO = 5  # answered by RESULT: versions, build, in-flight counts


class FrameError(ValueError):
    """A frame or payload that breaks the format (too large, undecodable, unsafe dtype)."""


class _Dataclass(Protocol):
    """Any dataclass (the shape typeshed gives them)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


T = TypeVar("T", bound=_Dataclass)


# -- frames ----------------------------------------------------------------------------


def frame(call_id: int, op: int, parts: list[Part], limit: int | None = None) -> list[Part]:
    """The frame's parts (header first), ready for ``writelines``.

    ``FrameError`` if its payload is over ``limit``: the peer would close the connection
    on reading its length, so the sender refuses it first, with a reason.
    """
    size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
    if limit is not None and size > limit:
        raise FrameError(f"frame of {size} bytes (limit {limit}: ray.channel_max_frame_bytes)")
    return [FRAME.pack(size + _AFTER_LENGTH, call_id, op), *parts]


async def read_frame(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME) -> tuple[int, int, bytes]:
    """The next frame as (call id, op, payload); ``FrameError`` before allocating an oversized one."""
    head = await reader.readexactly(FRAME.size)
    length, call_id, op = FRAME.unpack(head)
    size = length - _AFTER_LENGTH
    if size < 0 or size > max_frame:
        raise FrameError(f"frame of {size} bytes (limit {max_frame})")
    return call_id, op, await reader.readexactly(size)


def json_payload(obj: Mapping[str, Any]) -> list[Part]:
    return [json.dumps(obj, separators=(",", ":")).encode()]


def read_json(payload: bytes | memoryview) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(payload))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FrameError(f"undecodable JSON payload: {exc}") from exc
    if not isinstance(obj, dict):
        raise FrameError("a JSON payload must be an object")
    return obj


def error_payload(code: Code, message: str) -> list[Part]:
    return json_payload({"code": int(code), "message": message})


def error_of(payload: bytes | memoryview) -> CreditAuthError:
    """The error an ERROR frame stands for, as the services' own exception."""
    try:
        err = read_json(payload)
    except FrameError as exc:
        return error_for(Code.INTERNAL, str(exc))
    code = err.get("code")
    return error_for(code if isinstance(code, int) else Code.INTERNAL, str(err.get("message", "")))


# -- batches ---------------------------------------------------------------------------


def encode(obj: _Dataclass, extra: Mapping[str, Any] | None = None) -> list[Part]:
    """A dataclass as payload parts: ndarray and bytes fields as buffers, the rest as JSON metadata."""
    arrays: list[list[Any]] = []
    meta: dict[str, Any] = dict(extra or {})
    buffers: list[Part] = []
    offset = 0
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            if a.dtype.hasobject:  # its bytes would be pointers into this process
                raise TypeError(f"{f.name}: arrays of objects cannot be sent")
            spec: Any = a.dtype.descr if a.dtype.names is not None else a.dtype.str
            arrays.append([f.name, spec, list(a.shape), offset])
            data: Part = a.reshape(-1).view(np.uint8).data
            size = a.nbytes
        elif isinstance(value, bytes):
            arrays.append([f.name, "bytes", [len(value)], offset])
            data, size = value, len(value)
        else:
            meta[f.name] = value
            continue
        pad = -size % _ALIGN
        buffers += [data, bytes(pad)] if pad else [data]
        offset += size + pad
    header = json.dumps({"a": arrays, "m": meta}, separators=(",", ":")).encode()
    header += b" " * (-(_U32.size + len(header)) % _ALIGN)  # JSON allows trailing blanks
    return [_U32.pack(len(header)), header, *buffers]


def decode(kind: type[T], payload: memoryview) -> tuple[T, dict[str, Any]]:
    """The object and any extra metadata that was not a field; ``FrameError`` if malformed."""
    try:
        header, body = _split(payload)
        values = {str(a[0]): _array(a, body) for a in header["a"]}
        meta = dict(header["m"])
    except (KeyError, TypeError, IndexError, ValueError, RecursionError) as exc:
        raise FrameError(f"undecodable payload: {exc}") from exc
    names = {f.name for f in dataclasses.fields(kind)}
    for name in names & meta.keys():
        values[name] = _tuples(meta.pop(name))
    try:
        return kind(**values), meta
    except TypeError as exc:  # fields missing or unknown: another layout
        raise FrameError(f"payload does not fit {kind.__name__}: {exc}") from exc


def _split(payload: memoryview) -> tuple[dict[str, Any], memoryview]:
    if len(payload) < _U32.size:
        raise FrameError("payload shorter than its header length")
    (hlen,) = _U32.unpack_from(payload, 0)
    if _U32.size + hlen > len(payload):
        raise FrameError(f"header of {hlen} bytes overruns a {len(payload)}-byte payload")
    header = json.loads(bytes(payload[_U32.size : _U32.size + hlen]))
    if not isinstance(header, dict):
        raise FrameError("header is not an object")
    return header, payload[_U32.size + hlen :]


def _tuples(v: Any) -> Any:
    # JSON turns tuples into lists; the dataclasses hold tuples (of tuples).
    if isinstance(v, list):
        return tuple(tuple(x) if isinstance(x, list) else x for x in v)
    return v


def _array(entry: list[Any], body: memoryview) -> np.ndarray[Any, Any] | bytes:
    _, spec, shape, offset = entry
    if not (isinstance(shape, list) and all(_count(d) for d in shape) and _count(offset)):
        raise FrameError(f"bad shape {shape!r} or offset {offset!r}")
    if spec == "bytes":
        (n,) = shape
        if offset + n > len(body):
            raise FrameError(f"bytes field of {n} at {offset} overruns a {len(body)}-byte body")
        return bytes(body[offset : offset + n])
    dt = dtype_of(spec)
    count = math.prod(shape)
    if dt.itemsize == 0 or offset + count * dt.itemsize > len(body):
        raise FrameError(f"{count} x {dt.itemsize} bytes at {offset} overrun a {len(body)}-byte body")
    return np.frombuffer(body, dtype=dt, count=count, offset=offset).reshape(shape)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def dtype_of(spec: Any, depth: int = 0) -> np.dtype[Any]:
    """A dtype from its wire form (``dtype.str`` or ``dtype.descr``), refusing anything not plain data."""
    if depth > _MAX_DEPTH:
        raise FrameError("structured dtype nested too deep")
    if isinstance(spec, str):
        # Only the ``dtype.str`` form ("<i8", "|S64"): numpy parses richer strings (comma
        # lists, repeat counts through ast.literal_eval) with errors of every kind.
        if not _SCALAR.fullmatch(spec):
            raise FrameError(f"dtype {spec!r} is not a plain scalar type")
        try:
            dt = np.dtype(spec)
        except (TypeError, ValueError) as exc:
            raise FrameError(f"unknown dtype {spec!r}") from exc
        if dt.kind not in _PLAIN_KINDS or dt.names is not None or dt.subdtype is not None:
            raise FrameError(f"dtype {spec!r} is not a plain scalar type")
        return dt
    if isinstance(spec, list):
        return _record(spec, depth)
    raise FrameError(f"bad dtype {spec!r}")


def _record(descr: list[Any], depth: int) -> np.dtype[Any]:
    """A structured dtype from its ``descr``: named fields at their offsets, padding skipped."""
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    at = 0
    for field in descr:
        if not (isinstance(field, list) and len(field) in (2, 3) and isinstance(field[0], str)):
            raise FrameError(f"bad field {field!r}")
        name = field[0]
        if not name:  # padding of an aligned or offset layout: only its size matters
            at += _padding(field)
            continue
        sub = dtype_of(field[1], depth + 1)
        if len(field) == 3:
            shape = field[2]
            if not (isinstance(shape, list) and shape and all(_count(d) for d in shape)):
                raise FrameError(f"bad field shape {shape!r}")
            sub = np.dtype((sub, tuple(shape)))
        names.append(name)
        formats.append(sub)
        offsets.append(at)
        at += sub.itemsize
    if not names or len(set(names)) != len(names):
        raise FrameError("a record needs distinct named fields")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": at})


def _padding(field: list[Any]) -> int:
    spec = field[1]
    if len(field) != 2 or not isinstance(spec, str) or not _PAD.fullmatch(spec):
        raise FrameError(f"bad padding field {field!r}")
    try:
        return np.dtype(spec).itemsize
    except (TypeError, ValueError) as exc:
        raise FrameError(f"bad padding field {field!r}") from exc
