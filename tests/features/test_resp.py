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


_Out = tuple[np.ndarray, np.ndarray, np.ndarray]


def _hmget(out: _Out) -> _resp.HmgetDecoder:
    return _resp.HmgetDecoder(_LAYOUT[0], _LAYOUT[1], out[0], out[1], out[2])


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
        _hmget(out).feed(bytearray(b"-WRONGTYPE no\r\n"), 0, 15)
    bad = bytearray(_reply([None, None]))  # 2 fields where 5 are expected
    with pytest.raises(_resp.RespProtocolError):
        _hmget(out).feed(bad, 0, len(bad))
    wrong = bytearray(_reply([b"\x0a\x01x", None, None, None, None]))  # bytes where a number goes
    with pytest.raises(_resp.RespValueError):
        _hmget(out).feed(wrong, 0, len(wrong))


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


# --- hostile replies: bounds, typed errors, no reads outside the buffer ------------------

_HOSTILE_FRAMES = {
    b"$9223372036854775807\r\n": "over the limit",
    b"$536870913\r\n": "over the limit",  # one byte over Redis's proto-max-bulk-len
    b"$9223372036854775808\r\n": "malformed",  # overflows int64
    b"$99999999999999999999\r\n": "malformed",  # 20 digits
    b"$-2\r\n": "malformed",
    b"$-0\r\n": "malformed",
    b"$\r\n": "malformed",
    b"$-\r\n": "malformed",
    b"$1 2\r\n": "malformed",
    b"$3\r\nabcXY": "malformed",  # no \r\n after the payload
    b"*-5\r\n": "malformed",
    b"*4611686018427387904\r\n": "more elements",
    b"*1\r\n" * 10_000 + b":1\r\n": "nested deeper than 32",
    b":12a\r\n": "malformed",
    b"%1\r\n+a\r\n+b\r\n": "malformed",  # RESP3 map: never asked for
    b"$123456789012345678901234567890": "malformed",  # a header with no end in sight
    b"+" + b"x" * (_resp.MAX_LINE_LEN + 10): "over the limit",
}


@pytest.mark.parametrize("frame", list(_HOSTILE_FRAMES), ids=lambda f: repr(f[:24]))
def test_hostile_frames_are_protocol_errors_for_every_decoder(frame: bytes) -> None:
    buf = bytearray(frame)
    for decoder in (_resp.ReplyCollector(1), _resp.ReplyCounter(1)):
        with pytest.raises(_resp.RespProtocolError, match=_HOSTILE_FRAMES[frame]):
            decoder.feed(buf, 0, len(buf))
    out = (np.full((1, 2), np.nan, np.float32), np.zeros((1, 8), np.uint8), np.zeros((1, 2), np.int64))
    as_field = bytearray(b"*5\r\n" + frame) if frame[:1] == b"$" else buf
    with pytest.raises(_resp.RespProtocolError):
        _hmget(out).feed(as_field, 0, len(as_field))


def test_depth_and_integer_edges_that_are_valid_still_decode() -> None:
    deepest = bytearray(b"*1\r\n" * _resp.MAX_NESTING + b":7\r\n")
    col = _resp.ReplyCollector(1)
    assert col.feed(deepest, 0, len(deepest)) == len(deepest)
    value = col.replies[0]
    for _ in range(_resp.MAX_NESTING):
        value = value[0]
    assert value == 7
    edges = bytearray(b":-9223372036854775808\r\n:9223372036854775807\r\n$-1\r\n*-1\r\n$0\r\n\r\n*0\r\n")
    col = _resp.ReplyCollector(6)
    assert col.feed(edges, 0, len(edges)) == len(edges)
    assert col.replies == [-(2**63), 2**63 - 1, None, None, b"", []]
    with pytest.raises(_resp.RespProtocolError):
        _resp.ReplyCollector(1).feed(bytearray(b":9223372036854775808\r\n"), 0, 22)


def test_an_incomplete_reply_reports_a_lower_bound_on_its_end() -> None:
    col = _resp.ReplyCollector(1)
    head = bytearray(b"$1000\r\n" + b"x" * 10)
    assert col.feed(head, 0, len(head)) == 0 and col.need == 7 + 1000 + 2
    arr = bytearray(b"*1000000\r\n+a\r\n")
    assert col.feed(arr, 0, len(arr)) == 0 and col.need >= 3 * 999_999
    counter = _resp.ReplyCounter(1)
    assert counter.feed(head, 0, len(head)) == 0 and counter.need == 1009


def test_collector_item_budget_bounds_objects_per_reply() -> None:
    many = bytearray(b"*5\r\n" + b":1\r\n" * 5)
    with pytest.raises(_resp.RespProtocolError, match="more elements"):
        _resp.ReplyCollector(1, max_items=4).feed(many, 0, len(many))
    col = _resp.ReplyCollector(1, max_items=6)  # the array itself and its 5 elements
    assert col.feed(many, 0, len(many)) == len(many) and col.replies == [[1] * 5]


def test_feed_refuses_start_and_end_outside_the_buffer() -> None:
    buf = bytearray(b"+OK\r\n")
    out = (np.full((1, 2), np.nan, np.float32), np.zeros((1, 8), np.uint8), np.zeros((1, 2), np.int64))
    for decoder in (_resp.ReplyCollector(1), _resp.ReplyCounter(1), _hmget(out)):
        for start, end in ((0, 6), (-1, 5), (3, 2), (0, 1 << 40)):
            with pytest.raises(ValueError, match="outside a buffer"):
                decoder.feed(buf, start, end)
        with pytest.raises(TypeError):
            decoder.feed(None, 0, 0)  # type: ignore[arg-type]


def test_hmget_layout_is_checked_against_the_outputs() -> None:
    out = (np.full((1, 2), np.nan, np.float32), np.zeros((1, 8), np.uint8), np.zeros((1, 2), np.int64))
    kinds = _LAYOUT[0]
    for bad_cols, match in ((np.array([0, 2, 0, 0, 1], np.int32), "outside matrix"),
                            (np.array([0, 1, 0, 0, 2], np.int32), "outside ts"),
                            (np.array([0, -1, 0, 0, 1], np.int32), "outside matrix"),
                            (np.array([0, 1, 0], np.int32), "cols 3")):
        with pytest.raises(ValueError, match=match):
            _resp.HmgetDecoder(kinds, bad_cols, *out)
    with pytest.raises(ValueError, match="unknown kind 9"):
        _resp.HmgetDecoder(np.array([9], np.int32), np.array([0], np.int32), *out)
    # Tags with no room (the writer's stamp reads) decode without touching them.
    dec = _resp.HmgetDecoder(np.array([_resp.KIND_TAGS], np.int32), np.zeros(1, np.int32), out[0],
                             np.zeros((1, 0), np.uint8), out[2])
    row = bytearray(_reply([b"\x0a\x02xy"]))
    assert dec.feed(row, 0, len(row)) == len(row)


def test_request_builders_refuse_what_their_c_would_misread() -> None:
    with pytest.raises(TypeError, match="command argument must be bytes"):
        _resp_build.encode_command([b"GET", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="field name must be bytes"):
        _resp_build.encode_fields(["f"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="key must be bytes"):
        _resp_build.encode_hmget([None], b"p", b"$1\r\nf\r\n", 1)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _resp_build.encode_hmget([b"k"], None, b"$1\r\nf\r\n", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_fields"):
        _resp_build.encode_hmget([b"k"], b"p", b"", 0)
    one = np.ones(2, np.uint8)
    ev = np.zeros(2, np.int64)
    short = ("float32", np.zeros(1, np.float32), one)
    with pytest.raises(ValueError, match="column length"):
        _resp_build.encode_hset_entities([b"a", b"b"], b"p", [(one, b"_ts:v", ev, [b"f"], [short])])
    with pytest.raises(ValueError, match="must be a list"):
        _resp_build.encode_hset_entities([b"a", b"b"], b"p", [(one, b"_ts:v", ev, [b"f"], [("bytes", (b"x", b"y"))])])
    with pytest.raises(TypeError, match="timestamp field name"):
        _resp_build.encode_hset_entities([b"a", b"b"], b"p", [(one, None, ev, [], [])])
    with pytest.raises(TypeError, match="key must be bytes"):
        _resp_build.encode_hset_entities([b"a", None], b"p", [(one, b"_ts:v", ev, [], [])])  # type: ignore[list-item]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(0, 300))
def test_arbitrary_bytes_give_a_position_or_a_typed_error(data: bytes, cut: int) -> None:
    buf = bytearray(data)
    end = min(cut, len(buf))
    out = (np.full((2, 2), np.nan, np.float32), np.zeros((2, 8), np.uint8), np.zeros((2, 2), np.int64))
    for decoder in (_resp.ReplyCollector(3), _resp.ReplyCounter(3), _hmget(out)):
        try:
            pos = decoder.feed(buf, 0, end)
        except (_resp.RespProtocolError, _resp.RespServerError, _resp.RespValueError):
            continue
        assert 0 <= pos <= end
