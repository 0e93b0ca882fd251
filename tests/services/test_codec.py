"""Request validation names the bad field; items become one compact batch."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from creditauth.v1 import authorization_pb2 as pb
from services.errors import InvalidRequest
from services.frontend.codec import MAX_AMOUNT_MINOR, to_batch, validate
from services.policy import currency_index


def good(**over: object) -> pb.AuthorizeRequest:
    req = pb.AuthorizeRequest(
        application_id="app-1",
        merchant_id="M00000001",
        term_months=12,
        product=pb.PRODUCT_WORKING_CAPITAL,
        channel=pb.CHANNEL_MOBILE_APP,
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
    with pytest.raises(InvalidRequest) as info:
        validate(good(**over), time.time() + 1)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_good_request_and_batch_columns() -> None:
    a = validate(good(), 10.0)
    b = validate(good(merchant_id="M2", currency="USD", amount=5, declared_monthly_revenue_minor=0), 20.0)
    assert math.isnan(a.declared_revenue_minor) and b.declared_revenue_minor == 0.0
    batch = to_batch([a, b])
    assert len(batch) == 2
    assert batch.ids() == ["M00000001", "M2"]
    assert batch.app_ids() == ["app-1", "app-1"]
    assert batch.currency.tolist() == [currency_index("CNY"), currency_index("USD")]
    assert batch.amount_minor.dtype == np.int64 and batch.amount_minor.tolist() == [100_000, 5]
    assert batch.deadline.tolist() == [10.0, 20.0]
    assert len(to_batch([])) == 0
