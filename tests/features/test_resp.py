"""The compiled RESP codec: incremental decoding, shapes, errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.stores import _codec
from features.stores.redis import _resp, _resp_build

K = _resp


def _bulk(v: bytes | None) -> bytes:
    return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)


def _reply(values: list[bytes | None]) -> bytes:
    return b"*%d\r\n" % len(values) + b"".join(_bulk(v) for v in values)


_LAYOUT = (
    np.array([K.KIND_NUMBER, K.KIND_NUMBER, K.KIND_TAGS, K.KIND_TS_SECONDS, K.KIND_TS_NANOS], np.int32),
    np.array([0, 1, 0, 0, 1], np.int32),
)

_row = st.tuples(
    st.one_of(
        st.none(), st.just(b""), st.floats(width=32, allow_nan=False).map(lambda f: b"\x35" + struct.pack("<f", f))
    ),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1).map(lambda i: _codec.encode_int64(
        np.array([i], np.int64), np.ones(1, np.uint8))[0])),
    st.one_of(st.none(), st.just(b""), st.binary(max_size=20).map(lambda b: _codec.encode_bytes([b])[0])),
    st.one_of(st.none(), st.integers(1, 2**40).map(lambda s: _codec.encode_timestamp(s, 0))),
    st.one_of(st.none(), st.tuples(st.integers(1, 2**33), st.integers(0, 999_999_999)).map(
        lambda t: _codec.encode_timestamp(*t))),
)


def _decode(stream: bytes, n: int, cuts: list[int]) -> tuple[np.ndarray, ...]:
    matrix = np.full((n, 2), np.nan, np.float32)
    tags = np.zeros((n, 8), np.uint8)
    ts = np.zeros((n, 2), np.int64)
    dec = _resp.HmgetDecoder(*_LAYOUT, matrix, tags, ts)
    buf = bytearray(stream)
    start = 0
    for end in [*sorted(cuts), len(buf)]:
        start = dec.feed(buf, start, end)
    assert dec.done and start == len(buf)
    return matrix, tags, ts


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(_row, min_size=1, max_size=6), data=st.data())
def test_decoding_does_not_depend_on_how_bytes_arrive(
    rows: list[tuple[bytes | None, ...]], data: st.DataObject
) -> None:
    stream = b"".join(_reply(list(r)) for r in rows)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    whole = _decode(stream, len(rows), [])
    pieces = _decode(stream, len(rows), cuts)
    for a, b in zip(whole, pieces, strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    m, tags, ts = whole
    for i, (num, i64, tag, sec, nanos) in enumerate(rows):
        assert np.isnan(m[i, 0]) if not num else m[i, 0] == struct.unpack("<f", num[1:])[0]
        if tag:
            payload = _codec.decode_bytes_value(tag) or b""
            assert tags[i, : len(payload[:8])].tobytes() == payload[:8]
        else:
            assert not tags[i].any()
        assert ts[i, 0] == (_codec.decode_timestamp(sec) if sec else 0)
        assert (ts[i, 1] > 0) == bool(nanos)
        assert np.isnan(m[i, 1]) == (i64 is None)


def test_error_and_shape_problems_are_typed() -> None:
    out = (np.full((1, 2), np.nan, np.float32), np.zeros((1, 8), np.uint8), np.zeros((1, 2), np.int64))
    with pytest.raises(_resp.RespServerError, match="WRONGTYPE"):
        _resp.HmgetDecoder(*_LAYOUT, *out).feed(bytearray(b"-WRONGTYPE no\r\n"), 0, 15)
    bad = bytearray(_reply([None, None]))  # 2 fields where 5 are expected
    with pytest.raises(_resp.RespProtocolError):
        _resp.HmgetDecoder(*_LAYOUT, *out).feed(bad, 0, len(bad))
    wrong = bytearray(_reply([b"\x0a\x01x", None, None, None, None]))  # bytes where a number goes
    with pytest.raises(_resp.RespValueError):
        _resp.HmgetDecoder(*_LAYOUT, *out).feed(wrong, 0, len(wrong))


def test_request_encoding_is_plain_resp() -> None:
    assert bytes(_resp_build.encode_command([b"GET", b"k"])) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    tail = _resp_build.encode_fields([b"ab", b"c"])
    assert bytes(_resp_build.encode_hmget([b"K1"], b"proj", tail, 2)) == (
        b"*4\r\n$5\r\nHMGET\r\n$6\r\nK1proj\r\n$2\r\nab\r\n$1\r\nc\r\n"
    )
    view_v = (
        np.array([1, 0, 1], np.uint8), b"_ts:v", np.array([1_000_001, 0, 5_000_000], np.int64), [b"f", b"g"],
        [("float32", np.array([1.5, 0, 2], np.float32), np.array([1, 1, 1], np.uint8)),
         ("int64", np.array([0, 0, 7], np.int64), np.array([0, 1, 1], np.uint8))],
    )
    view_w = (np.array([0, 0, 1], np.uint8), b"_ts:w", np.array([0, 0, 5_000_000], np.int64), [b"h"],
              [("bytes", [None, None, b"xy"])])
    buf, n = _resp_build.encode_hset_entities([b"K", b"L", b"M"], b"p", [view_v, view_w])
    assert n == 2  # L has no row in either view: no command
    ts1, ts5 = _codec.encode_timestamp(1, 1000), _codec.encode_timestamp(5, 0)
    assert bytes(buf) == (
        # K: view v only (as Feast's HSET for one view), with a null Value for g
        b"*8\r\n$4\r\nHSET\r\n$2\r\nKp\r\n$5\r\n_ts:v\r\n" + _bulk(ts1)
        + b"$1\r\nf\r\n" + _bulk(b"\x35" + struct.pack("<f", 1.5)) + b"$1\r\ng\r\n$0\r\n\r\n"
        # M: both views in one command
        + b"*12\r\n$4\r\nHSET\r\n$2\r\nMp\r\n$5\r\n_ts:v\r\n" + _bulk(ts5)
        + b"$1\r\nf\r\n" + _bulk(b"\x35" + struct.pack("<f", 2.0)) + b"$1\r\ng\r\n" + _bulk(b"\x20\x07")
        + b"$5\r\n_ts:w\r\n" + _bulk(ts5) + b"$1\r\nh\r\n" + _bulk(b"\x0a\x02xy")
    )


def test_reply_collector_keeps_errors_as_values() -> None:
    stream = bytearray(b"+OK\r\n-NOSCRIPT x\r\n:5\r\n*2\r\n:1\r\n$-1\r\n")
    col = _resp.ReplyCollector(4)
    assert col.feed(stream, 0, len(stream)) == len(stream)
    ok, err, five, arr = col.replies
    assert ok == b"OK" and isinstance(err, _resp.RespServerError) and five == 5 and arr == [1, None]
