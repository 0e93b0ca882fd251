"""The direct channel's payload codec: any dataclass of arrays, bytes and JSON-able metadata,
structured arrays included; and everything a hostile or corrupt payload could ask for is refused."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from services.runtime.channel import frames
from services.runtime.channel.frames import FrameError
from services.schema.records import DECISION_DTYPE, REQUEST_DTYPE


@dataclass(frozen=True)
class _Mixed:
    plain: np.ndarray[Any, Any]
    rows: np.ndarray[Any, Any]
    blob: bytes
    table: tuple[tuple[str, str], ...] = ()
    stages: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _round_trip(obj: _Mixed, extra: dict[str, Any] | None = None) -> tuple[_Mixed, dict[str, Any]]:
    return frames.decode(_Mixed, memoryview(b"".join(bytes(p) for p in frames.encode(obj, extra))))


@pytest.mark.parametrize(
    "dtype",
    [
        REQUEST_DTYPE,
        DECISION_DTYPE,
        np.dtype({"names": ["a", "b"], "formats": ["i1", "<f8"], "offsets": [0, 8], "itemsize": 24}),  # padding
        np.dtype([("x", "<i2", (2, 3)), ("y", [("p", "u1"), ("q", "S3")]), ("z", ">u4")]),  # nested, big-endian
        np.dtype([("s", "U5"), ("ok", "?"), ("c", "<c8")]),
    ],
)
def test_structured_arrays_round_trip_bit_for_bit(dtype: np.dtype[Any]) -> None:
    rows = np.zeros(7, dtype)
    # Every byte random, padding included: the records travel as one raw buffer.
    rows.view(np.uint8)[:] = np.random.default_rng(7).integers(0, 256, rows.nbytes, dtype=np.uint8)
    obj = _Mixed(np.arange(5, dtype=np.float32), rows, b"abc", (("A", "b"),), {"kernel": 0.5}, "hi")
    got, extra = _round_trip(obj, {"trace": "t"})
    assert got.rows.dtype == dtype and got.rows.tobytes() == rows.tobytes()
    assert np.array_equal(got.plain, obj.plain) and got.blob == b"abc"
    assert got.table == (("A", "b"),) and got.stages == {"kernel": 0.5} and got.note == "hi"
    assert extra == {"trace": "t"}


def test_decoded_columns_are_aligned() -> None:
    obj = _Mixed(np.arange(3, dtype=np.int8), np.zeros(5, DECISION_DTYPE), b"x")
    payload = b"".join(bytes(p) for p in frames.encode(obj))
    header_end = 4 + struct.unpack_from("<I", payload)[0]
    assert header_end % 8 == 0
    got, _ = frames.decode(_Mixed, memoryview(payload))
    assert got.rows.shape == (5,) and got.plain.tolist() == [0, 1, 2]


def _payload(arrays: list[list[Any]], body: bytes = b"\0" * 64, meta: dict[str, Any] | None = None) -> memoryview:
    header = json.dumps({"a": arrays, "m": meta or {}}).encode()
    return memoryview(struct.pack("<I", len(header)) + header + body)


@pytest.mark.parametrize(
    "spec",
    [
        "O",  # objects: unpickling by another name
        "|O",
        [["a", "<i4"], ["b", "O"]],  # an object field inside a record
        [["a", [["b", "|O"]]]],  # ... nested
        "M8[s]",  # kinds the batches never use
        "V8",  # raw void outside a record
        "(2,)i4",  # a subarray dtype string
        "i4,i4",  # a record spelled as a string
        [["", "<i4"]],  # padding that is not void
        [["a", "<i4"], ["a", "<i4"]],  # duplicate names
        [],  # a record with no fields
        [[["title", "a"], "<i4"]],  # titled fields
        "no-such-dtype",
        7,
    ],
)
def test_unsafe_or_unknown_dtypes_are_refused(spec: Any) -> None:
    with pytest.raises(FrameError):
        frames.decode(_Mixed, _payload([["rows", spec, [1], 0], ["plain", "<f4", [1], 8], ["blob", "bytes", [1], 0]]))


@pytest.mark.parametrize(
    "entry",
    [
        ["plain", "<f8", [9], 0],  # 72 bytes from a 64-byte body
        ["plain", "<f8", [1], 60],  # starts inside, ends outside
        ["plain", "<f8", [-1], 0],
        ["plain", "<f8", [1], -8],
        ["plain", "<f8", [True], 0],
        ["plain", "<f8", "8", 0],
        ["plain", [["a", "<i8", [9]]], [1], 0],  # a record wider than the body
        ["blob", "bytes", [65], 0],
        ["plain", "V0", [1], 0],
    ],
)
def test_arrays_that_overrun_the_payload_are_refused(entry: list[Any]) -> None:
    arrays = [["rows", "<i4", [1], 0], ["blob", "bytes", [1], 0], ["plain", "<f4", [1], 0]]
    arrays = [a for a in arrays if a[0] != entry[0]] + [entry]
    with pytest.raises(FrameError):
        frames.decode(_Mixed, _payload(arrays))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        struct.pack("<I", 1000) + b"{}",  # header longer than the payload
        struct.pack("<I", 2) + b"[]",  # header not an object
        struct.pack("<I", 3) + b"{x}",
        struct.pack("<I", 20000) + b"[" * 20000,  # nesting deeper than the JSON parser recurses
    ],
)
def test_malformed_headers_are_refused(payload: bytes) -> None:
    with pytest.raises(FrameError):
        frames.decode(_Mixed, memoryview(payload))


def test_a_payload_for_another_layout_is_refused() -> None:
    with pytest.raises(FrameError, match="does not fit _Mixed"):
        frames.decode(_Mixed, _payload([["plain", "<f4", [1], 0]]))


def test_object_arrays_are_never_sent() -> None:
    with pytest.raises(TypeError, match="objects"):
        frames.encode(_Mixed(np.array([object()]), np.zeros(1, REQUEST_DTYPE), b""))


def test_error_frames_carry_codes_both_ways() -> None:
    from services.errors import Overloaded, code_of
    from services.schema.codes import Code

    err = frames.error_of(b"".join(frames.error_payload(Code.RESOURCE_EXHAUSTED, "busy")))
    assert isinstance(err, Overloaded) and str(err) == "busy"
    assert code_of(frames.error_of(b"not json")) == Code.INTERNAL
