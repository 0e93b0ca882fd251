"""The C wire codec against the readable reference (codec.validate / codec.to_responses).

Generated requests of every shape, valid and not, must get the same verdict
(same field, same message) and the same columns; responses encoded from the
replica's columns must parse to exactly the protobuf objects the reference
builds.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditauth.v1 import authorization_pb2 as pb
from services.errors import InvalidRequest
from services.frontend import _wire
from services.frontend.codec import to_batch, to_responses, validate
from services.frontend.servicer import CURRENCY_CODES, CURRENCY_TABLE, MAX_CHANNEL, MAX_PRODUCT
from services.scoring.factory import build_engine
from services.settings import load_settings
from tests.conftest import World, feature_settings

ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:\-]{1,64}", fullmatch=True),
    st.text(max_size=70),
    st.just(""),
    st.just("x" * 65),
)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
amounts = st.one_of(int64, st.integers(-5, 5), st.integers(10**12 - 2, 10**12 + 2))


@st.composite
def requests(draw: st.DrawFn) -> pb.AuthorizeRequest:
    r = pb.AuthorizeRequest(
        application_id=draw(ids),
        merchant_id=draw(ids),
        term_months=draw(st.one_of(int32, st.integers(-2, 62))),
        product=draw(st.integers(-3, 7)),
        channel=draw(st.integers(-3, 7)),
    )
    if draw(st.booleans()) or draw(st.booleans()):
        r.requested_amount.amount_minor = draw(amounts)
        r.requested_amount.currency = draw(st.sampled_from(["CNY", "USD", "JPY", "XXX", "", "cny", "EURO", "€€€"]))
    if draw(st.booleans()):
        r.declared_monthly_revenue_minor = draw(amounts)
    return r


def _verdict(r: pb.AuthorizeRequest) -> tuple[str, str] | None:
    try:
        validate(r, 0.0)
    except InvalidRequest as exc:
        return (exc.field, exc.message)
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=0, max_size=12))
def test_decode_agrees_with_reference(reqs: list[pb.AuthorizeRequest]) -> None:
    body = pb.AuthorizeBatchRequest(requests=reqs).SerializeToString()
    d = _wire.decode(body, True, CURRENCY_TABLE, MAX_PRODUCT, MAX_CHANNEL)
    assert d.total == len(reqs)
    errors = {pos: (field, msg) for pos, _, field, msg in d.errors}
    valid = [i for i, r in enumerate(reqs) if _verdict(r) is None]
    assert d.index.tolist() == valid
    for i, r in enumerate(reqs):
        assert errors.get(i) == _verdict(r), (i, r)
    items = [validate(reqs[i], 0.0) for i in valid]
    ref = to_batch(items)
    assert d.application_ids == ref.application_ids and d.merchant_ids == ref.merchant_ids
    for mine, theirs in [
        (d.amount, ref.amount_minor), (d.currency, ref.currency), (d.term, ref.term_months),
        (d.product, ref.product), (d.channel, ref.channel),
    ]:
        assert mine.tolist() == theirs.tolist()
    assert np.array_equal(d.declared, ref.declared_revenue_minor, equal_nan=True)
    for r in reqs:  # the single-message path agrees too
        one = _wire.decode_one(r.SerializeToString(), CURRENCY_TABLE, MAX_PRODUCT, MAX_CHANNEL)
        v = _verdict(r)
        assert (one[0] is False and (one[2], one[3]) == v) or (one[0] is True and v is None)


def test_unknown_fields_are_skipped_and_last_value_wins() -> None:
    r = pb.AuthorizeRequest(application_id="a", merchant_id="m", term_months=3, product=1, channel=1)
    r.requested_amount.amount_minor = 5
    r.requested_amount.currency = "CNY"
    raw = r.SerializeToString()
    # field 99 varint (unknown), then term_months again (last wins), then more Money (merged).
    extra = bytes([0x98, 0x06, 0x01]) + bytes([0x20, 0x09]) + bytes([0x1A, 0x02, 0x08, 0x07])
    one = _wire.decode_one(raw + extra, CURRENCY_TABLE, MAX_PRODUCT, MAX_CHANNEL)
    assert one[0] and one[5] == 9 and one[3] == 7 and one[4] == 0


@pytest.mark.parametrize("junk", [b"\x0a\xff", b"\x0a\x05abc", b"\x07", b"\x22\x80"])
def test_malformed_bytes_are_a_wire_error(junk: bytes) -> None:
    with pytest.raises(_wire.WireError):
        _wire.decode_one(junk, CURRENCY_TABLE, MAX_PRODUCT, MAX_CHANNEL)
    with pytest.raises(_wire.WireError):
        _wire.decode(b"\x0a" + bytes([len(junk)]) + junk, True, CURRENCY_TABLE, MAX_PRODUCT, MAX_CHANNEL)


def test_encoded_responses_equal_the_reference(world: World) -> None:
    settings_ = load_settings(
        None, {"features": feature_settings(world).model_dump(), "serving": {"idempotency_window_s": 0}}
    )
    engine = build_engine(settings_)
    reqs = []
    for i in range(300):
        r = pb.AuthorizeRequest(
            application_id=f"w{i}", merchant_id=f"M{i * 7 % 3100:08d}", term_months=1 + i % 36,
            product=1 + i % 4, channel=1 + i % 5,
        )
        r.requested_amount.amount_minor = 10_000 + i * 997
        r.requested_amount.currency = ["CNY", "USD", "JPY", "EUR"][i % 4]
        reqs.append(r)
    items = [validate(r, time.time() + (60 if i % 29 else -1)) for i, r in enumerate(reqs)]
    resp = engine.score(to_batch(items))
    assert (resp.status != 0).any()  # some expired: error responses are covered too
    ref = to_responses(items, resp)
    enc = _wire.Encoder(resp, CURRENCY_CODES)
    for k, it in enumerate(items):
        got = pb.AuthorizeResponse.FromString(_wire.encode_one(enc, k, it.application_id.encode(), it.currency))
        assert got == ref[k], k
    # In a batch, with a bad request interleaved at position 2.
    index = np.array([0, 1, *range(3, len(items) + 1)], dtype=np.int32)
    errors = [(2, "bad-one", 3, "requests[2].term_months", "must be 1-60, got 0")]
    body = _wire.encode_batch(
        len(items) + 1, enc, index, [it.application_id.encode() for it in items],
        np.array([it.currency for it in items], dtype=np.int8), errors,
    )
    out = pb.AuthorizeBatchResponse.FromString(body).responses
    assert out[2].error.field == "requests[2].term_months" and out[2].application_id == "bad-one"
    assert [m for j, m in enumerate(out) if j != 2] == ref
    assert not any(math.isnan(m.probability_of_default) for m in out if m.decision)
    engine.close()
