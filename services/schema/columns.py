"""The declaration: every column of a request and of a decision, once.

A column names its record field, its numpy dtype and its proto path; a request column
adds the rule it is validated by and the words of each refusal. Everything else is
derived from these two tuples and the proto's descriptors: the record dtypes that
batches, the direct channel and the idempotency store carry (``services.schema.records``),
the C wire codec's field tables (``services.frontend.wire``), the limits, the fingerprint
of what was asked, and the error paths a caller sees (``requested_amount.currency``).

A new response field is the proto, one ``Out`` here, and the code that computes its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from creditauth.v1 import authorization_pb2 as pb

# Anything above this is a typo or an attack, not a small-merchant credit request
# (10 billion in major units for a 2-decimal currency).
MAX_AMOUNT_MINOR = 10**12
MAX_TERM_MONTHS = 60
ID_CHARS = "A-Za-z0-9._:-"
MAX_ID = 64
# Reasons kept per decision (policy reasons first, then rules, then model reasons).
MAX_REASONS = 16

Rule = Literal["id", "range", "enum", "currency", "none"]
Table = Literal["currency", "reason_code", "reason_description"]


@dataclass(frozen=True)
class In:
    """One request column.

    ``proto`` is the field's path in ``AuthorizeRequest`` (``None``: set by the front end,
    not read from the wire). ``rule`` is how the value is checked: ``id`` (1-64 characters
    of ``ID_CHARS``), ``range`` (``lo``..``hi``), ``enum`` (a named, non-zero value of the
    proto enum), ``currency`` (a booked currency code, stored as its index). A column in
    an optional field holds NaN when the field is absent. ``fingerprint``: part of "what
    was asked" (the same application id asking something else is refused).
    """

    name: str
    dtype: str
    proto: str | None
    rule: Rule = "none"
    lo: int = 0
    hi: int = 0
    fingerprint: bool = False
    # Refusal texts ({v}: the value, {lo}/{hi}: the bounds); defaults per rule.
    too_low: str = "must be {lo}-{hi}, got {v}"
    too_high: str = "must be {lo}-{hi}, got {v}"


@dataclass(frozen=True)
class Out:
    """One decision column: ``proto`` is its path in ``AuthorizeResponse`` (``None``: kept in
    the record only). ``shape`` makes a fixed-size array column; columns under one repeated
    message (``reasons.*``) are its elements (an element exists where the first such column,
    an index, is not negative), and ``table`` names the lookup a string field is written
    from by index (``currency``: the booked codes; ``reason_*``: the batch's reason table)."""

    name: str
    dtype: str
    proto: str | None
    shape: int = 0
    table: Table | Literal[""] = ""
    # A float written as this when it is NaN (proto3 has no "unknown" for a double).
    nan_as: float | None = None
    # More string fields written from the same index, each from its own table.
    also: tuple[tuple[str, Table], ...] = ()


REQUEST: tuple[In, ...] = (
    In("application_id", f"S{MAX_ID}", "application_id", "id"),
    In("merchant_id", f"S{MAX_ID}", "merchant_id", "id", fingerprint=True),
    In(
        "amount_minor", "<i8", "requested_amount.amount_minor", "range", 1, MAX_AMOUNT_MINOR, True,
        too_low="must be positive, got {v}", too_high="must be at most {hi}, got {v}",
    ),
    In("currency", "i1", "requested_amount.currency", "currency", fingerprint=True),
    In("term_months", "<i2", "term_months", "range", 1, MAX_TERM_MONTHS, True),
    In("product", "i1", "product", "enum", fingerprint=True),
    In("channel", "i1", "channel", "enum", fingerprint=True),
    In("declared_revenue_minor", "<f8", "declared_monthly_revenue_minor", "range", 0, MAX_AMOUNT_MINOR, True),
    # Absolute Unix time by which the caller needs the answer (the RPC's deadline).
    In("deadline", "<f8", None),
    # Who asked: the authenticated caller's name (services.auth), set by the front end;
    # empty where callers are anonymous. Idempotency keys are scoped by it.
    In("caller", f"S{MAX_ID}", None),
)

DECISION: tuple[Out, ...] = (
    # The item's status: 0 decided, else the gRPC code it was refused with.
    Out("status", "i1", None),
    Out("application_id", f"S{MAX_ID}", "application_id"),
    Out("decision_id", "S40", "decision_id"),
    Out("decision", "i1", "decision"),
    Out("approved_minor", "<i8", "approved_limit.amount_minor"),
    Out("currency", "i1", "approved_limit.currency", table="currency"),
    Out("apr_bps", "<i4", "apr_bps"),
    Out("risk_grade", "S4", "risk_grade"),
    Out("pd", "<f8", "probability_of_default"),
    # Index into the batch's reason table (-1: none: no element); contribution beside it.
    Out(
        "reason", "<i2", "reasons.code", MAX_REASONS, "reason_code",
        also=(("reasons.description", "reason_description"),),
    ),
    Out("reason_contrib", "<f4", "reasons.contribution", MAX_REASONS),
    Out("model_version", "S64", "model_version"),
    Out("policy_version", "S64", "policy_version"),
    # Which bundle decided (its registry id; "" for an engine not built from a registry) and
    # as which variant of its deployment ("champion" or a challenger's name).
    Out("bundle_id", "S64", "bundle_id"),
    Out("variant", "S32", "variant"),
    Out("feature_age_s", "<f4", "freshness.max_age_seconds", nan_as=0.0),
    Out("stale", "?", "freshness.stale"),
    Out("degraded", "?", "degraded"),
    # The request's fingerprint: a replay must have been asked the same.
    Out("fingerprint", "<u8", None),
)

REQUEST_MESSAGE = pb.AuthorizeRequest.DESCRIPTOR
RESPONSE_MESSAGE = pb.AuthorizeResponse.DESCRIPTOR
