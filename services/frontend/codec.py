"""Requests in, responses out: validation and the proto <-> batch conversion.

Validation names the offending field by its proto path so a caller can fix the
request without reading our code. ``Item`` is the validated form of one
request; many items become one ``RequestBatch`` in a single pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from creditauth.v1 import authorization_pb2 as pb
from services.errors import InvalidRequest
from services.policy import currency_index
from services.policy.currency import CURRENCIES
from services.scoring import RequestBatch, ResponseBatch

_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
# Anything above this is a typo or an attack, not a small-merchant credit request
# (10 billion in major units for a 2-decimal currency).
MAX_AMOUNT_MINOR = 10**12
MAX_TERM_MONTHS = 60
_PRODUCTS = frozenset(v for v in pb.Product.values() if v != pb.PRODUCT_UNSPECIFIED)
_CHANNELS = frozenset(v for v in pb.Channel.values() if v != pb.CHANNEL_UNSPECIFIED)


class Item(NamedTuple):
    application_id: str
    merchant_id: str
    amount_minor: int
    currency: int
    term_months: int
    product: int
    channel: int
    declared_revenue_minor: float  # NaN when absent
    deadline: float
    trace: str = ""  # traceparent when this request is traced


def validate(req: pb.AuthorizeRequest, deadline: float, trace: str = "") -> Item:
    """The validated item, or ``InvalidRequest`` naming the first bad field."""
    app_id = req.application_id
    if not app_id:
        raise InvalidRequest("application_id", "is required")
    if not _ID.fullmatch(app_id):
        raise InvalidRequest("application_id", "must be 1-64 characters of [A-Za-z0-9._:-]")
    mid = req.merchant_id
    if not mid:
        raise InvalidRequest("merchant_id", "is required")
    if not _ID.fullmatch(mid):
        raise InvalidRequest("merchant_id", "must be 1-64 characters of [A-Za-z0-9._:-]")
    if not req.HasField("requested_amount"):
        raise InvalidRequest("requested_amount", "is required")
    amount = req.requested_amount.amount_minor
    if amount <= 0:
        raise InvalidRequest("requested_amount.amount_minor", f"must be positive, got {amount}")
    if amount > MAX_AMOUNT_MINOR:
        raise InvalidRequest("requested_amount.amount_minor", f"must be at most {MAX_AMOUNT_MINOR}, got {amount}")
    code = req.requested_amount.currency
    cur = currency_index(code)
    if cur < 0:
        raise InvalidRequest("requested_amount.currency", f"unknown or unsupported currency {code!r}")
    term = req.term_months
    if not 1 <= term <= MAX_TERM_MONTHS:
        raise InvalidRequest("term_months", f"must be 1-{MAX_TERM_MONTHS}, got {term}")
    if req.product not in _PRODUCTS:
        raise InvalidRequest("product", f"must be a known product, got {req.product}")
    if req.channel not in _CHANNELS:
        raise InvalidRequest("channel", f"must be a known channel, got {req.channel}")
    declared = math.nan
    if req.HasField("declared_monthly_revenue_minor"):
        d = req.declared_monthly_revenue_minor
        if d < 0 or d > MAX_AMOUNT_MINOR:
            raise InvalidRequest("declared_monthly_revenue_minor", f"must be 0-{MAX_AMOUNT_MINOR}, got {d}")
        declared = float(d)
    return Item(app_id, mid, amount, cur, term, req.product, req.channel, declared, deadline, trace)


def to_batch(items: Sequence[Item], trace: str = "") -> RequestBatch:
    """One ``RequestBatch`` from validated items (one pass per column, no per-item arrays)."""
    cols = list(zip(*items, strict=True)) if items else [()] * len(Item._fields)
    return RequestBatch(
        application_ids="\n".join(cols[0]).encode("ascii"),
        merchant_ids="\n".join(cols[1]).encode("ascii"),
        amount_minor=np.array(cols[2], dtype=np.int64),
        currency=np.array(cols[3], dtype=np.int8),
        term_months=np.array(cols[4], dtype=np.int16),
        product=np.array(cols[5], dtype=np.int8),
        channel=np.array(cols[6], dtype=np.int8),
        declared_revenue_minor=np.array(cols[7], dtype=np.float64),
        deadline=np.array(cols[8], dtype=np.float64),
        trace="\n".join(t for t in (trace, *cols[9]) if t) if items else trace,
    )


def error_response(application_id: str, code: int, field: str, message: str) -> pb.AuthorizeResponse:
    return pb.AuthorizeResponse(
        application_id=application_id,
        error=pb.ItemError(code=code, field=field, message=message),
    )


def to_responses(items: Sequence[Item], resp: ResponseBatch) -> list[pb.AuthorizeResponse]:
    """Protos for ``items`` answered by ``resp`` (same order, same length)."""
    out: list[pb.AuthorizeResponse] = []
    status = resp.status.tolist()
    decision = resp.decision.tolist()
    approved = resp.approved_minor.tolist()
    apr = resp.apr_bps.tolist()
    grade = resp.grade.tolist()
    pd_ = resp.pd.tolist()
    age = resp.feature_age_s.tolist()
    stale = resp.stale.tolist()
    degraded = resp.degraded.tolist()
    version = resp.version.tolist()
    reason = resp.reason.tolist()
    contrib = resp.reason_contrib.tolist()
    ids = resp.decision_id_list()
    letters = resp.grade_letters
    table = resp.reason_table
    versions = resp.versions
    for i, it in enumerate(items):
        if status[i] != 0:
            out.append(error_response(it.application_id, status[i], "", resp.message or "not decided"))
            continue
        model_version, policy_version = versions[version[i]]
        r = pb.AuthorizeResponse(
            application_id=it.application_id,
            decision_id=ids[i],
            decision=decision[i],
            apr_bps=apr[i],
            risk_grade=letters[grade[i]] if grade[i] >= 0 else "",
            probability_of_default=pd_[i],
            model_version=model_version,
            policy_version=policy_version,
            degraded=degraded[i],
        )
        r.approved_limit.amount_minor = approved[i]
        r.approved_limit.currency = CURRENCIES[it.currency].code
        r.freshness.max_age_seconds = age[i] if age[i] == age[i] else 0.0
        r.freshness.stale = stale[i]
        codes = r.reasons
        for code_idx, c in zip(reason[i], contrib[i], strict=True):
            if code_idx >= 0:
                code, desc = table[code_idx]
                codes.add(code=code, description=desc, contribution=c)
        out.append(r)
    return out
