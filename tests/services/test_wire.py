"""The C wire codec against references: the protobuf library and a plain-Python reading of the rules.

Generated requests of every shape, valid and not, must get the reference's verdict (same
field, same message) and the columns protobuf parses; responses encoded from decision
records must parse to exactly the protobuf objects a plain-Python encoder builds.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditauth.v1 import authorization_pb2 as pb
from services.errors import InvalidRequest
from services.frontend import wire
from services.schema.codes import Code
from services.schema.columns import MAX_AMOUNT_MINOR
from services.schema.currency import CURRENCIES, currency_index
from services.schema.records import DECISION_DTYPE, REQUEST_DTYPE, DecisionBatch, RequestBatch
from services.scoring.factory import build_engine
from services.settings import load_settings
from tests.conftest import World, feature_settings

_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


def reference_verdict(req: pb.AuthorizeRequest) -> tuple[str, str] | None:
    """The rules as the API documents them, read in plain Python: ``(field, message)`` or None."""
    for name in ("application_id", "merchant_id"):
        v = getattr(req, name)
        if not v:
            return name, "is required"
        if not _ID.fullmatch(v):
            return name, "must be 1-64 characters of [A-Za-z0-9._:-]"
    if not req.HasField("requested_amount"):
        return "requested_amount", "is required"
    amount = req.requested_amount.amount_minor
    if amount <= 0:
        return "requested_amount.amount_minor", f"must be positive, got {amount}"
    if amount > MAX_AMOUNT_MINOR:
        return "requested_amount.amount_minor", f"must be at most {MAX_AMOUNT_MINOR}, got {amount}"
    if currency_index(req.requested_amount.currency) < 0:
        return "requested_amount.currency", f"unknown or unsupported currency {req.requested_amount.currency!r}"
    if not 1 <= req.term_months <= 60:
        return "term_months", f"must be 1-60, got {req.term_months}"
    if req.product not in [v for v in pb.Product.values() if v]:
        return "product", f"must be a known product, got {req.product}"
    if req.channel not in [v for v in pb.Channel.values() if v]:
        return "channel", f"must be a known channel, got {req.channel}"
    if req.HasField("declared_monthly_revenue_minor"):
        d = req.declared_monthly_revenue_minor
        if d < 0 or d > MAX_AMOUNT_MINOR:
            return "declared_monthly_revenue_minor", f"must be 0-{MAX_AMOUNT_MINOR}, got {d}"
    return None


def reference_record(req: pb.AuthorizeRequest, deadline: float) -> np.void:
    r = np.zeros(1, REQUEST_DTYPE)[0]
    r["application_id"] = req.application_id.encode()
    r["merchant_id"] = req.merchant_id.encode()
    r["amount_minor"] = req.requested_amount.amount_minor
    r["currency"] = currency_index(req.requested_amount.currency)
    r["term_months"] = req.term_months
    r["product"] = req.product
    r["channel"] = req.channel
    has = req.HasField("declared_monthly_revenue_minor")
    r["declared_revenue_minor"] = float(req.declared_monthly_revenue_minor) if has else math.nan
    r["deadline"] = deadline
    return r


def _verdict(data: bytes) -> tuple[str, str] | None:
    try:
        wire.requests.decode_one(data, 0.0)
    except wire.Violation as v:
        e = wire.describe(v)
        return e.field, e.message
    return None


ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:\-]{1,64}", fullmatch=True), st.text(max_size=70), st.just(""), st.just("x" * 65)
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


def _same_record(got: np.void, want: np.void) -> bool:
    return all(
        (math.isnan(got[f]) and math.isnan(want[f])) if f == "declared_revenue_minor" and math.isnan(want[f])
        else got[f] == want[f]
        for f in REQUEST_DTYPE.names or ()
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=0, max_size=12))
def test_decode_agrees_with_reference(reqs: list[pb.AuthorizeRequest]) -> None:
    body = pb.AuthorizeBatchRequest(requests=reqs).SerializeToString()
    d = wire.decode_batch(body, 7.0, 1000, Code.INVALID_ARGUMENT)
    assert d.total == len(reqs)
    valid = [i for i, r in enumerate(reqs) if reference_verdict(r) is None]
    assert d.index.tolist() == valid
    errors = {e.position: (e.field, e.message) for e in d.errors}
    for i, r in enumerate(reqs):
        v = reference_verdict(r)
        assert errors.get(i) == (None if v is None else (f"requests[{i}].{v[0]}", v[1])), (i, r)
    for k, i in enumerate(valid):
        assert _same_record(d.batch.rows[k], reference_record(reqs[i], 7.0)), (i, reqs[i])
    for r in reqs:  # the single-message path agrees too
        assert _verdict(r.SerializeToString()) == reference_verdict(r)


def test_unknown_fields_are_skipped_and_last_value_wins() -> None:
    r = pb.AuthorizeRequest(application_id="a", merchant_id="m", term_months=3, product=1, channel=1)
    r.requested_amount.amount_minor = 5
    r.requested_amount.currency = "CNY"
    raw = r.SerializeToString()
    # field 99 varint (unknown), then term_months again (last wins), then more Money (merged).
    extra = bytes([0x98, 0x06, 0x01]) + bytes([0x20, 0x09]) + bytes([0x1A, 0x02, 0x08, 0x07])
    rec = np.frombuffer(wire.requests.decode_one(raw + extra, 1.5), REQUEST_DTYPE)[0]
    assert rec["term_months"] == 9 and rec["amount_minor"] == 7 and rec["currency"] == 0
    assert rec["deadline"] == 1.5 and rec["application_id"] == b"a"


@pytest.mark.parametrize("junk", [b"\x0a\xff", b"\x0a\x05abc", b"\x07", b"\x22\x80"])
def test_malformed_bytes_are_a_wire_error(junk: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.requests.decode_one(junk, 0.0)
    with pytest.raises(wire.WireError):
        wire.decode_batch(b"\x0a" + bytes([len(junk)]) + junk, 0.0, 10, Code.INVALID_ARGUMENT)


def test_items_are_counted_before_anything_is_decoded() -> None:
    one = pb.AuthorizeRequest(application_id="a").SerializeToString()
    body = (b"\x0a" + bytes([len(one)]) + one) * 11
    with pytest.raises(InvalidRequest, match="at most 10 per call, got 11"):
        wire.decode_batch(body, 0.0, 10, Code.INVALID_ARGUMENT)


def good(**over: object) -> pb.AuthorizeRequest:
    req = pb.AuthorizeRequest(
        application_id="app-1", merchant_id="M00000001", term_months=12,
        product=pb.PRODUCT_WORKING_CAPITAL, channel=pb.CHANNEL_MOBILE_APP,
    )
    req.requested_amount.amount_minor = 1_000_00
    req.requested_amount.currency = "CNY"
    for k, v in over.items():
        if k == "amount":
            req.requested_amount.amount_minor = v  # type: ignore[assignment]
        elif k == "currency":
            req.requested_amount.currency = v  # type: ignore[assignment]
        elif k == "no_amount":
            req.ClearField("requested_amount")
        else:
            setattr(req, k, v)
    return req


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"application_id": ""}, "application_id"),
        ({"application_id": "bad id with spaces"}, "application_id"),
        ({"application_id": "x" * 65}, "application_id"),
        ({"merchant_id": ""}, "merchant_id"),
        ({"merchant_id": "M\n1"}, "merchant_id"),
        ({"no_amount": True}, "requested_amount"),
        ({"amount": 0}, "requested_amount.amount_minor"),
        ({"amount": -5}, "requested_amount.amount_minor"),
        ({"amount": MAX_AMOUNT_MINOR + 1}, "requested_amount.amount_minor"),
        ({"currency": "XXX"}, "requested_amount.currency"),
        ({"currency": ""}, "requested_amount.currency"),
        ({"currency": "cny"}, "requested_amount.currency"),
        ({"term_months": 0}, "term_months"),
        ({"term_months": 61}, "term_months"),
        ({"product": pb.PRODUCT_UNSPECIFIED}, "product"),
        ({"product": 99}, "product"),
        ({"channel": pb.CHANNEL_UNSPECIFIED}, "channel"),
        ({"declared_monthly_revenue_minor": -1}, "declared_monthly_revenue_minor"),
    ],
)
def test_bad_fields_are_named(over: dict[str, object], field: str) -> None:
    v = _verdict(good(**over).SerializeToString())
    assert v is not None and v[0] == field
    assert str(InvalidRequest(*v)).startswith(field + ":")


def test_good_requests_become_one_batch_of_records() -> None:
    a = wire.requests.decode_one(good().SerializeToString(), 10.0)
    b = wire.requests.decode_one(
        good(merchant_id="M2", currency="USD", amount=5, declared_monthly_revenue_minor=0).SerializeToString(), 20.0
    )
    batch = RequestBatch.of_records([a, b])
    assert len(batch) == 2 and batch.merchant_ids() == ["M00000001", "M2"]
    assert batch.application_ids() == ["app-1", "app-1"]
    assert batch["currency"].tolist() == [currency_index("CNY"), currency_index("USD")]
    assert batch["amount_minor"].tolist() == [100_000, 5] and batch.deadline.tolist() == [10.0, 20.0]
    assert math.isnan(batch["declared_revenue_minor"][0]) and batch["declared_revenue_minor"][1] == 0.0
    assert len(RequestBatch.of_records([])) == 0


def item_details_of(code: int) -> list[Any]:
    """What every item error of ``code`` carries, built here from google.rpc's own messages."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2

    from services.frontend.details import REASONS, RETRY_AFTER_S

    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=REASONS.get(Code(code), "UNKNOWN"), domain="creditauth.v1"))
    out = [info]
    if Code(code) in RETRY_AFTER_S:
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
            seconds=int(RETRY_AFTER_S[Code(code)]), nanos=round(RETRY_AFTER_S[Code(code)] % 1 * 1e9))))
        out.append(retry)
    return out


def reference_response(row: np.void, resp: DecisionBatch) -> pb.AuthorizeResponse:
    """A plain-Python encoding of one decision record (what the C encoder must equal)."""
    app = row["application_id"].decode()
    if row["status"]:
        code = int(row["status"])
        return pb.AuthorizeResponse(application_id=app, error=pb.ItemError(
            code=code, message=resp.message or "not decided", details=item_details_of(code)))
    r = pb.AuthorizeResponse(
        application_id=app, decision_id=row["decision_id"].decode(), decision=int(row["decision"]),
        apr_bps=int(row["apr_bps"]), risk_grade=row["risk_grade"].decode(),
        probability_of_default=float(row["pd"]), model_version=row["model_version"].decode(),
        policy_version=row["policy_version"].decode(), degraded=bool(row["degraded"]),
        bundle_id=row["bundle_id"].decode(), variant=row["variant"].decode(),
    )
    r.approved_limit.amount_minor = int(row["approved_minor"])
    r.approved_limit.currency = CURRENCIES[row["currency"]].code
    age = float(row["feature_age_s"])
    r.freshness.max_age_seconds = 0.0 if math.isnan(age) else age
    r.freshness.stale = bool(row["stale"])
    for idx, contrib in zip(row["reason"].tolist(), row["reason_contrib"].tolist(), strict=True):
        if idx >= 0:
            code, desc = resp.reason_table[idx]
            r.reasons.add(code=code, description=desc, contribution=contrib)
    return r


def test_encoded_responses_equal_the_reference(world: World) -> None:
    settings_ = load_settings(
        None, {"features": feature_settings(world).model_dump(), "serving": {"idempotency_window_s": 0}}
    )
    engine = build_engine(settings_)
    records = []
    for i in range(300):
        r = good(
            application_id=f"w{i}", merchant_id=f"M{i * 7 % 3100:08d}", term_months=1 + i % 36,
            product=1 + i % 4, channel=1 + i % 5, amount=10_000 + i * 997, currency=["CNY", "USD", "JPY", "EUR"][i % 4],
        )
        records.append(wire.requests.decode_one(r.SerializeToString(), time.time() + (60 if i % 29 else -1)))
    resp = engine.score(RequestBatch.of_records(records))
    assert (resp.status != 0).any()  # some expired: error responses are covered too
    assert resp.rows.dtype == DECISION_DTYPE
    enc = wire.encoder(resp)
    ref = [reference_response(row, resp) for row in resp.rows]
    for k in range(len(records)):
        assert pb.AuthorizeResponse.FromString(wire.encode_one(enc, k)) == ref[k], k
    # In a batch, with a bad request interleaved at position 2.
    index = np.array([0, 1, *range(3, len(records) + 1)], dtype=np.int32)
    errors = [wire.ItemError(2, b"bad-one", 3, "requests[2].term_months", "must be 1-60, got 0").as_tuple()]
    out = pb.AuthorizeBatchResponse.FromString(wire.encode_batch(len(records) + 1, enc, index, errors)).responses
    assert out[2].error.field == "requests[2].term_months" and out[2].application_id == "bad-one"
    from google.rpc import error_details_pb2

    bad = error_details_pb2.BadRequest()
    assert list(out[2].error.details[:1]) == item_details_of(3) and out[2].error.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [(out[2].error.field, out[2].error.message)]
    assert [m for j, m in enumerate(out) if j != 2] == ref
    assert not any(math.isnan(m.probability_of_default) for m in out if m.decision)
    engine.close()


def test_inconsistent_answers_are_refused_not_encoded() -> None:
    rows = np.zeros(2, DECISION_DTYPE)
    rows["reason"] = -1
    enc = wire.encoder(DecisionBatch(rows, (("X", "x"),)))
    assert pb.AuthorizeResponse.FromString(wire.encode_one(enc, 0)).decision == 0
    with pytest.raises(wire.EncodeError, match="outside a batch"):
        wire.encode_one(enc, 2)
    rows["reason"][1, 0] = 5  # outside a table of one: refused before any caller is answered
    with pytest.raises(wire.EncodeError, match="outside a table"):
        wire.encoder(DecisionBatch(rows, (("X", "x"),)))
    # Changed after the encoder was built: the encoder still reads nothing outside its table.
    with pytest.raises(wire.EncodeError, match="outside table"):
        wire.encode_one(enc, 1)
    with pytest.raises(ValueError, match="another layout"):
        wire.encoder(DecisionBatch(np.zeros(2, REQUEST_DTYPE)))
    rows["reason"][1, 0] = -1
    rows["currency"][0] = 100
    with pytest.raises(wire.EncodeError, match="outside a table"):
        wire.encoder(DecisionBatch(rows, (("X", "x"),)))
