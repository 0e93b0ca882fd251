"""The wire codec's typed face: the declaration compiled into the C codec's tables.

``services.frontend._wire`` decodes and encodes by interpreting tables; this module builds
them once, at import, from ``services.schema`` (the columns) and the proto's descriptors
(field numbers, wire types, enum values), and turns the codec's verdicts into
``InvalidRequest`` errors that name the field by its proto path.

Nothing a caller sent is echoed unbounded: a quoted value is cut to ``MAX_QUOTE``
characters, an invalid application id is not echoed at all (the codec leaves
``Violation.app`` empty), and the encoder bounds every error text it writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.errors import InvalidRequest
from services.frontend import _wire, details
from services.frontend._wire import (
    EncodeError,
    Encoder,
    Violation,
    WireError,
    encode_batch,
    encode_one,
)
from services.schema.codes import Code
from services.schema.columns import DECISION, ID_CHARS, MAX_ID, REQUEST, REQUEST_MESSAGE, RESPONSE_MESSAGE, In
from services.schema.currency import CURRENCIES
from services.schema.records import DECISION_DTYPE, REQUEST_DTYPE, DecisionBatch, RequestBatch

__all__ = [
    "MAX_QUOTE",
    "MAX_TEXT",
    "DecodedBatch",
    "EncodeError",
    "Encoder",
    "ItemError",
    "Violation",
    "WireError",
    "decode_batch",
    "describe",
    "encode_batch",
    "encode_error",
    "encode_one",
    "encoder",
    "requests",
]

F = FieldDescriptor
_RULES = {"none": 0, "id": 1, "range": 2, "enum": 3, "currency": 4}
_V_REQUIRED, _V_PARENT, _V_PATTERN, _V_LOW, _V_HIGH, _V_ENUM, _V_TABLE = range(1, 8)
_K_BYTES, _K_INT, _K_DOUBLE = 0, 1, 2
_OP_OPEN, _OP_CLOSE, _OP_VARINT, _OP_BOOL, _OP_DOUBLE, _OP_STRING, _OP_TABLE, _OP_REPEAT, _OP_END = range(1, 10)
_TABLES = ("currency", "reason_code", "reason_description")
_LENGTH_DELIMITED = (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE)
_VARINTS = (F.TYPE_INT32, F.TYPE_INT64, F.TYPE_ENUM, F.TYPE_BOOL)
CURRENCY_CODES = [c.code.encode() for c in CURRENCIES]
# A value quoted back in a refusal: enough to recognise it, never the whole of a hostile one.
MAX_QUOTE = 128
# Characters of an error's field or message the encoder writes (longer ones are cut, "..." marks it).
MAX_TEXT = _wire.MAX_TEXT
assert _wire.MAX_ID == MAX_ID, "the codec echoes ids of the declared length"


def _message(fd: FieldDescriptor) -> Descriptor:
    assert fd.message_type is not None
    return fd.message_type


def _offset(dtype: np.dtype[Any], name: str) -> tuple[int, np.dtype[Any]]:
    sub, off = dtype.fields[name][:2]  # type: ignore[index]
    return int(off), sub


# -- requests ---------------------------------------------------------------------


def _request_tables() -> tuple[list[list[int]], list[list[int]], int, list[str]]:
    """Routes (message, field number, wire type, slot, child message) and column specs;
    also the proto path of each column's parent message ("" at the top)."""
    slots: dict[str, int] = {}
    messages: dict[str, int] = {"": 0}
    routes: list[list[int]] = []
    cols: list[list[int]] = []
    parents: list[str] = []
    for c in REQUEST:
        if c.proto is None:
            continue
        desc: Descriptor = REQUEST_MESSAGE
        parent = ""
        for i, part in enumerate(c.proto.split(".")):
            fd = desc.fields_by_name[part]
            path = ".".join(c.proto.split(".")[: i + 1])
            if fd.type not in _LENGTH_DELIMITED + _VARINTS:
                raise TypeError(f"{c.name}: proto field {path} has a type the codec does not read")
            if path not in slots:
                slots[path] = len(slots)
                child = -1
                if fd.type == F.TYPE_MESSAGE:
                    child = messages[path] = len(messages)
                wire = 2 if fd.type in _LENGTH_DELIMITED else 0
                routes.append([messages[parent], fd.number, wire, slots[path], child])
            if fd.type == F.TYPE_MESSAGE:
                parent, desc = path, _message(fd)
        cols.append(_column_spec(c, slots, parent, fd))
        parents.append(parent)
    return routes, cols, len(slots), parents


def _column_spec(c: In, slots: dict[str, int], parent: str, fd: FieldDescriptor) -> list[int]:
    assert c.proto is not None
    offset, sub = _offset(REQUEST_DTYPE, c.name)
    kind = {"S": _K_BYTES, "i": _K_INT, "f": _K_DOUBLE}[sub.kind]
    mask = 0
    if c.rule == "enum":
        assert fd.enum_type is not None, f"{c.name}: rule 'enum' on a field that is no enum"
        for v in fd.enum_type.values:
            if 0 < v.number < 64:
                mask |= 1 << v.number
    optional = fd.has_presence and fd.type != F.TYPE_MESSAGE
    wire32 = fd.type in (F.TYPE_INT32, F.TYPE_ENUM)
    return [
        slots[c.proto], slots[parent] if parent else -1, _RULES[c.rule], c.lo, c.hi, mask,
        int(optional), offset, sub.itemsize, kind, int(wire32),
    ]


_ROUTES, _COLS, _SLOTS, _PARENTS = _request_tables()
_wire.set_code_details(details.code_details(max(Code)))  # every item error's ErrorInfo / RetryInfo, once
_ON_WIRE = [c for c in REQUEST if c.proto is not None]
requests = _wire.RequestCodec(
    np.asarray(_ROUTES, np.int64), np.asarray(_COLS, np.int64), _SLOTS, b"".join(CURRENCY_CODES),
    REQUEST_DTYPE, _offset(REQUEST_DTYPE, "deadline")[0], _offset(REQUEST_DTYPE, "caller")[0], MAX_ID,
)


def describe(v: Violation) -> InvalidRequest:
    """The refusal of a request, worded by its column's declaration."""
    c = _ON_WIRE[v.column]
    assert c.proto is not None
    field = c.proto
    if v.verdict == _V_PARENT:
        return InvalidRequest(_PARENTS[v.column], "is required")
    if v.verdict == _V_REQUIRED:
        return InvalidRequest(field, "is required")
    if v.verdict == _V_PATTERN:
        return InvalidRequest(field, f"must be 1-{MAX_ID} characters of [{ID_CHARS}]")
    if v.verdict in (_V_LOW, _V_HIGH):
        template = c.too_low if v.verdict == _V_LOW else c.too_high
        return InvalidRequest(field, template.format(v=v.number, lo=c.lo, hi=c.hi))
    if v.verdict == _V_ENUM:
        return InvalidRequest(field, f"must be a known {field.rsplit('.', 1)[-1]}, got {v.number}")
    return InvalidRequest(field, f"unknown or unsupported currency {quote(v.text)}")


def quote(value: bytes) -> str:
    """``value`` as a quoted string of at most ``MAX_QUOTE`` characters (``...`` marks a cut)."""
    text = value[: 4 * MAX_QUOTE].decode("utf-8", "replace")
    if len(text) > MAX_QUOTE:
        return repr(text[:MAX_QUOTE]) + "..."
    return repr(text)


@dataclass(frozen=True)
class ItemError:
    """An item of a batch or stream that is answered with an error instead of a decision."""

    position: int
    application_id: bytes
    code: int
    field: str
    message: str

    def as_tuple(self) -> tuple[int, bytes, int, str, str, bytes]:
        """What the C encoder takes: the item's own details (a ``BadRequest``) serialized."""
        extra = details.item_details(_bounded(self.field), _bounded(self.message))
        return (self.position, self.application_id, self.code, self.field, self.message, extra)


def encode_error(app: bytes, code: int, field: str, message: str) -> bytes:
    """An ``AuthorizeResponse`` carrying only ``error`` (a stream's refused item), with its details."""
    extra = details.item_details(_bounded(field), _bounded(message))
    return bytes(_wire.encode_error(app, code, field, message, extra))


def _bounded(text: str) -> str:
    """``text`` cut as the encoder cuts what it writes (the details repeat it)."""
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


@dataclass(frozen=True)
class DecodedBatch:
    """An ``AuthorizeBatchRequest``: ``batch`` holds the valid requests, ``index[k]`` the
    position in the call of ``batch.rows[k]``; ``errors`` the refused ones."""

    total: int
    index: npt.NDArray[np.int32]
    batch: RequestBatch
    errors: list[ItemError]


def decode_batch(
    data: bytes, deadline: float, max_items: int, code: int, *, trace: str = "", caller: bytes = b""
) -> DecodedBatch:
    """Decode and validate a batch call; refused items get ``code`` (INVALID_ARGUMENT).

    Raises ``WireError`` for bytes that are no such message and ``InvalidRequest`` (on
    ``requests``) for more than ``max_items`` items, before any item is decoded.
    """
    try:
        total, index, rows, violations = requests.decode_batch(data, deadline, max_items, caller)
    except OverflowError as exc:
        raise InvalidRequest("requests", f"at most {max_items} per call, got {exc.args[0]}") from None
    errors = []
    for pos, v in violations:
        e = describe(v)
        errors.append(ItemError(pos, v.app, code, f"requests[{pos}].{e.field}", e.message))
    return DecodedBatch(total, index, RequestBatch(rows, trace), errors)


# -- responses --------------------------------------------------------------------


def _leaf(path: str) -> tuple[Any, str] | None:
    for c in DECISION:
        if c.proto == path:
            return c, c.table
        for p, table in c.also:
            if p == path:
                return c, table
    return None


def _op(fd: FieldDescriptor, column: Any, table: str) -> list[int]:
    offset, sub = _offset(DECISION_DTYPE, column.name)
    base = sub.base if sub.shape else sub
    stride = base.itemsize if sub.shape else 0
    width = base.itemsize
    if table:
        return [_OP_TABLE, fd.number, offset, stride, width, _TABLES.index(table), 0]
    if fd.type == F.TYPE_STRING:
        return [_OP_STRING, fd.number, offset, stride, width, 0, 0]
    if fd.type == F.TYPE_BOOL:
        return [_OP_BOOL, fd.number, offset, stride, width, 0, 0]
    if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return [_OP_DOUBLE, fd.number, offset, stride, width, 0, int(column.nan_as is not None)]
    if fd.type in (F.TYPE_INT32, F.TYPE_INT64, F.TYPE_ENUM):
        return [_OP_VARINT, fd.number, offset, stride, width, 0, 0]
    raise TypeError(f"{column.name}: proto field {fd.full_name} has a type the encoder does not write")


def _emit(desc: Descriptor, prefix: str, ops: list[list[int]]) -> None:
    """Ops for every declared field of ``desc``, in field-number order."""
    for fd in sorted(desc.fields, key=lambda f: f.number):
        path = prefix + fd.name
        if fd.type != F.TYPE_MESSAGE:
            leaf = _leaf(path)
            if leaf is not None:
                ops.append(_op(fd, *leaf))
            continue
        if not any(c.proto and c.proto.startswith(path + ".") for c in DECISION):
            continue  # no column under it (``error``: written for refused items only)
        if fd.is_repeated:
            guard = next(c for c in DECISION if c.proto and c.proto.startswith(path + ".") and c.table)
            offset, sub = _offset(DECISION_DTYPE, guard.name)
            at = len(ops)
            ops.append([_OP_REPEAT, fd.number, offset, sub.base.itemsize, sub.base.itemsize, 0, sub.shape[0]])
            ops.append([_OP_OPEN, fd.number, 0, 0, 0, 0, 0])
            _emit(_message(fd), path + ".", ops)
            ops.append([_OP_CLOSE, fd.number, 0, 0, 0, 0, 1])
            ops.append([_OP_END, 0, 0, 0, 0, 0, 0])
            ops[at][5] = len(ops) - 1
        else:
            ops.append([_OP_OPEN, fd.number, 0, 0, 0, 0, 0])
            _emit(_message(fd), path + ".", ops)
            ops.append([_OP_CLOSE, fd.number, 0, 0, 0, 0, 1])  # kept when empty, as before


def _program() -> _wire.Program:
    ops: list[list[int]] = []
    _emit(RESPONSE_MESSAGE, "", ops)
    app_offset, app = _offset(DECISION_DTYPE, "application_id")
    return _wire.Program(
        np.asarray(ops, np.int64), DECISION_DTYPE.itemsize, _offset(DECISION_DTYPE, "status")[0],
        app_offset, app.itemsize, len(_TABLES), _offset(DECISION_DTYPE, "decision")[0],
    )


PROGRAM = _program()


def encoder(resp: DecisionBatch) -> Encoder:
    """Once per backend call: the encoder every unit of the call answers from.

    The replica's answer is checked here, before any caller is given it (the C encoder does,
    once over the rows: statuses are codes, table indices inside their tables); an answer
    that cannot be encoded raises ``EncodeError``, an ``InternalError`` (``INTERNAL``: the
    replica broke its contract, no caller can fix it by retrying or rewording).
    """
    rows = np.ascontiguousarray(resp.rows)
    if not isinstance(rows, np.ndarray) or rows.dtype != DECISION_DTYPE or rows.ndim != 1:
        raise EncodeError("the replica answered with records of another layout")
    try:
        codes = [c.encode() for c, _ in resp.reason_table]
        descriptions = [d.encode() for _, d in resp.reason_table]
    except (TypeError, ValueError, AttributeError) as exc:
        raise EncodeError(f"the replica answered with a malformed reason table: {exc}") from None
    message = (resp.message or "not decided")[: _wire.MAX_TEXT].encode("utf-8", "replace")
    return Encoder(PROGRAM, rows, [CURRENCY_CODES, codes, descriptions], message)
