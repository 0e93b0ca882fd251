"""The replica's batch check (services.schema.validate): each rule of the declaration refuses what
it should and only that, bad rows are answered in place with INVALID_ARGUMENT, the rest scored."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.errors import InvalidRequest
from services.schema import validate
from services.schema.codes import Code
from services.schema.columns import MAX_AMOUNT_MINOR, MAX_TERM_MONTHS
from services.schema.currency import CURRENCIES
from services.schema.enums import CHANNELS, PRODUCTS
from services.schema.records import DECISION_DTYPE, REQUEST_DTYPE, DecisionBatch, RequestBatch, Rows, blank_decisions


def _rows(n: int = 4) -> Rows:
    rows = np.zeros(n, REQUEST_DTYPE)
    rows["application_id"] = [f"app-{i}".encode() for i in range(n)]
    rows["merchant_id"] = [f"M.{i}:x_y-z" for i in range(n)]
    rows["amount_minor"] = 1000
    rows["currency"] = len(CURRENCIES) - 1
    rows["term_months"] = MAX_TERM_MONTHS
    rows["product"] = len(PRODUCTS)
    rows["channel"] = len(CHANNELS)
    rows["declared_revenue_minor"] = np.nan  # absent: allowed
    rows["deadline"] = time.time() + 5
    return rows


def test_valid_rows_pass_including_the_edges() -> None:
    rows = _rows()
    rows["amount_minor"][0] = MAX_AMOUNT_MINOR
    rows["declared_revenue_minor"][1] = 0.0
    rows["application_id"][2] = b"a" * 64  # the full width, no NUL at all
    if "caller" in (REQUEST_DTYPE.names or ()):
        rows["caller"][3] = b"spiffe://ns/sa@x"  # names from services.auth: printable, no blanks
    assert validate.check(rows).ok


@pytest.mark.parametrize(
    ("column", "value", "field", "words"),
    [
        ("application_id", b"", "application_id", "must be 1-64 characters"),
        ("application_id", b"ab\x00cd", "application_id", "must be 1-64 characters"),
        ("merchant_id", b"M 1", "merchant_id", "got b'M 1'"),
        ("merchant_id", b"\xff", "merchant_id", "must be 1-64 characters"),
        ("amount_minor", 0, "requested_amount.amount_minor", "must be positive, got 0"),
        ("amount_minor", MAX_AMOUNT_MINOR + 1, "requested_amount.amount_minor", "must be at most"),
        ("currency", len(CURRENCIES), "requested_amount.currency", "booked currency"),
        ("currency", -1, "requested_amount.currency", "got -1"),
        ("term_months", 0, "term_months", "must be 1-60, got 0"),
        ("product", 0, "product", "must be a known product, got 0"),
        ("product", len(PRODUCTS) + 1, "product", "known product"),
        ("channel", -5, "channel", "must be a known channel, got -5"),
        ("declared_revenue_minor", -1.0, "declared_monthly_revenue_minor", "must be 0-"),
        ("declared_revenue_minor", np.inf, "declared_monthly_revenue_minor", "got inf"),
        ("deadline", np.nan, "deadline", "must be a finite time"),
        ("deadline", np.inf, "deadline", "must be a finite time"),
    ],
)
def test_each_rule_refuses_its_row_by_field(column: str, value: object, field: str, words: str) -> None:
    rows = _rows()
    rows[column][2] = value
    report = validate.check(rows)
    assert report.bad.tolist() == [False, False, True, False]
    assert list(report.problems) == [2]
    got_field, message = report.problems[2]
    assert got_field == field and words in message


def test_caller_may_be_empty_but_not_blank_or_cut() -> None:
    if "caller" not in (REQUEST_DTYPE.names or ()):
        pytest.skip("REQUEST has no caller column yet")
    rows = _rows()
    rows["caller"][0] = b""
    rows["caller"][1] = b"a b"
    rows["caller"][2] = b"svc\x00x"
    report = validate.check(rows)
    assert report.bad.tolist() == [False, True, True, False]
    assert report.problems[1][0] == "caller"


def test_a_row_names_its_first_broken_column_and_the_message_counts_the_rest() -> None:
    rows = _rows(6)
    rows["product"][:] = 9
    rows["application_id"][0] = b""
    report = validate.check(rows)
    assert report.problems[0][0] == "application_id"  # declared before product
    text = validate.describe(report)
    assert text.startswith("item 0: application_id:") and text.endswith("and 3 more invalid items")


def test_whole_batch_layout_is_a_typed_error() -> None:
    with pytest.raises(InvalidRequest, match="rows: must be request records") as bad:
        validate.require_rows(np.zeros(2, DECISION_DTYPE))
    assert bad.value.field == "rows"
    with pytest.raises(InvalidRequest, match="1-dimensional"):
        validate.require_rows(np.zeros((1, 2), REQUEST_DTYPE))
    with pytest.raises(InvalidRequest, match="got list"):
        validate.require_rows([1, 2])


def test_screen_scores_the_good_rows_and_refuses_the_bad_in_place() -> None:
    seen: list[int] = []

    def score(batch: RequestBatch) -> DecisionBatch:
        seen.append(len(batch))
        rows = blank_decisions(len(batch))
        rows["decision"] = 1
        rows["application_id"] = batch["application_id"]
        rows["reason"][:, 0] = 0
        return DecisionBatch(rows, (("R1", "why"),), "", {"kernel": 0.1})

    rows = _rows(5)
    rows["term_months"][1] = 61
    rows["merchant_id"][3] = b"x/y"
    out = validate.screen(RequestBatch(rows), score)
    assert seen == [3]
    assert out.status.tolist() == [0, Code.INVALID_ARGUMENT, 0, Code.INVALID_ARGUMENT, 0]
    assert out["decision"].tolist() == [1, 0, 1, 0, 1]
    assert out["application_id"].tolist() == rows["application_id"].tolist()  # answers line up
    assert out.reason_codes(0) == ["R1"] and out.reason_codes(1) == []
    assert "item 1: term_months" in out.message and out.stage_s == {"kernel": 0.1}

    rows["product"][:] = 0  # nothing left to score: the engine is not called
    seen.clear()
    assert (validate.screen(RequestBatch(rows), score).status == Code.INVALID_ARGUMENT).all() and not seen
    same = RequestBatch(_rows(2))
    assert validate.screen(same, score).rows.shape == (2,)  # all valid: the batch as it came
