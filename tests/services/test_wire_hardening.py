"""The codec against answers and arguments it must refuse: a typed error each, never a crash.

The dangerous cases (anything that read outside a buffer before) run in one child process,
so a segmentation fault fails these tests instead of killing pytest; the child reports
each case's outcome as a line of JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from creditauth.v1 import authorization_pb2 as pb
from services.errors import InternalError, code_of
from services.frontend import wire
from services.schema.codes import Code
from services.schema.records import DECISION_DTYPE, DecisionBatch, blank_decisions

ROOT = Path(__file__).resolve().parents[2]
TABLE = (("R1", "first reason"),)


def _rows(n: int = 2, **set_: Any) -> Any:
    rows = blank_decisions(n)
    rows["application_id"] = b"app-1"
    for name, value in set_.items():
        rows[name] = value
    return rows


def _batch(rows: Any, total: int | None = None, offset: int = 0, table: Any = TABLE) -> bytes:
    n = len(rows) if total is None else total
    return wire.encode_batch(n, wire.encoder(DecisionBatch(rows, table)), np.arange(n, dtype=np.int32), [], offset)


def _reason_outside() -> bytes:
    rows = _rows()
    rows["reason"][1, 3] = 7
    return _batch(rows)


def _no_nul_padding() -> bytes:
    """Every byte set (no string has a NUL), indices and status then made valid: it encodes."""
    rows = blank_decisions(3)
    rows.view(np.uint8)[:] = 0x41
    rows["status"], rows["reason"], rows["currency"] = 0, -1, 1
    return _batch(rows)


def _not_utf8() -> bytes:
    rows = _rows()
    rows["decision_id"][0] = b"\xff\xfe-not-text"
    return _batch(rows)


def _fake_rows() -> bytes:
    class Rows:
        dtype, ndim, shape = DECISION_DTYPE, 1, (10**9,)

    return wire.encode_one(wire.Encoder(wire.PROGRAM, Rows(), [[], [], []], b""), 0)  # type: ignore[arg-type]


# name -> (the call, the error it must raise); "ok" cases must return bytes that parse.
CASES: dict[str, tuple[Callable[[], object], str]] = {
    "rows shorter than the call": (lambda: _batch(_rows(2), total=3), "EncodeError"),
    "offset beyond the rows": (lambda: _batch(_rows(2), offset=1), "EncodeError"),
    "negative offset": (lambda: _batch(_rows(2), offset=-5), "EncodeError"),
    "row outside encode_one": (lambda: wire.encode_one(wire.encoder(DecisionBatch(_rows(2))), 2), "EncodeError"),
    "negative row": (lambda: wire.encode_one(wire.encoder(DecisionBatch(_rows(2))), -1), "EncodeError"),
    "reason outside the table": (_reason_outside, "EncodeError"),
    "reason with an empty table": (lambda: _batch(_rows(1, reason=0), table=()), "EncodeError"),
    "currency outside the table": (lambda: _batch(_rows(2, currency=99)), "EncodeError"),
    "status above the codes": (lambda: _batch(_rows(2, status=99)), "EncodeError"),
    "negative status": (lambda: _batch(_rows(2, status=-3)), "EncodeError"),
    "string not UTF-8": (_not_utf8, "EncodeError"),
    "reason table of non-strings": (lambda: _batch(_rows(1), table=((1, 2),)), "EncodeError"),
    "index out of order": (
        lambda: wire.encode_batch(2, wire.encoder(DecisionBatch(_rows(2))), np.array([1, 0], np.int32), []),
        "EncodeError",
    ),
    "index beyond the call": (
        lambda: wire.encode_batch(2, wire.encoder(DecisionBatch(_rows(2))), np.array([0, 10**9], np.int32), []),
        "EncodeError",
    ),
    "item error with no request": (
        lambda: wire.encode_batch(
            1, None, np.zeros(0, np.int32), [(0, b"a", 3, "", "x", b""), (5, b"b", 3, "", "y", b"")]
        ),
        "EncodeError",
    ),
    "item error of None": (
        lambda: wire.encode_batch(1, None, np.zeros(0, np.int32), [(0, None, 3, "f", "m", b"")]),  # type: ignore[list-item]
        "EncodeError",
    ),
    "item error without its details": (
        lambda: wire.encode_batch(1, None, np.zeros(0, np.int32), [(0, b"a", 3, "f", "m")]),  # type: ignore[list-item]
        "EncodeError",
    ),
    "item error with oversized details": (
        lambda: wire.encode_batch(1, None, np.zeros(0, np.int32), [(0, b"a", 3, "f", "m", b"\x22" * 20000)]),
        "EncodeError",
    ),
    "encoder of None": (lambda: wire.encode_one(None, 0), "TypeError"),  # type: ignore[arg-type]
    "records that are no array": (_fake_rows, "TypeError"),
    "error app of None": (lambda: wire.encode_error(None, 3, "f", "m"), "TypeError"),  # type: ignore[arg-type]
    "request of None": (lambda: wire.requests.decode_one(None, 0.0), "TypeError"),  # type: ignore[arg-type]
    "caller of None": (lambda: wire.requests.decode_batch(b"", 0.0, 10, None), "TypeError"),  # type: ignore[arg-type]
    "strings without NUL padding": (_no_nul_padding, "ok"),
}


def _child() -> None:
    """In the child: run every case, one JSON line each (the last line before a crash names it)."""
    for name, (call, _) in CASES.items():
        print(json.dumps({"case": name, "started": True}), flush=True)
        try:
            out = call()
            outcome = "ok" if isinstance(out, bytes) else type(out).__name__
            if outcome == "ok":
                pb.AuthorizeBatchResponse.FromString(out)
        except Exception as exc:
            outcome = type(exc).__name__
            if isinstance(exc, InternalError):
                assert code_of(exc) == Code.INTERNAL
        print(json.dumps({"case": name, "outcome": outcome}), flush=True)


@pytest.fixture(scope="module")
def outcomes() -> tuple[int, str, dict[str, str]]:
    code = "from tests.services.test_wire_hardening import _child; _child()"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    return p.returncode, p.stderr[-2000:], {x["case"]: x["outcome"] for x in lines if "outcome" in x}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inconsistent_input_is_a_typed_error_not_a_crash(outcomes: tuple[int, str, dict[str, str]], case: str) -> None:
    rc, stderr, seen = outcomes
    assert rc == 0, f"the child died with {rc} (a crash?) after {list(seen)[-1:]}: {stderr}"
    assert seen.get(case) == CASES[case][1], (case, seen.get(case))


def test_encode_errors_are_internal_errors() -> None:
    with pytest.raises(InternalError) as info:
        _batch(_rows(2, status=99))
    assert code_of(info.value) == Code.INTERNAL and isinstance(info.value, wire.EncodeError)


def _request(**over: Any) -> pb.AuthorizeRequest:
    r = pb.AuthorizeRequest(application_id="app-1", merchant_id="M00000001", term_months=12, product=1, channel=2)
    r.requested_amount.amount_minor, r.requested_amount.currency = 100_000, "CNY"
    for k, v in over.items():
        if k == "currency":
            r.requested_amount.currency = v
        else:
            setattr(r, k, v)
    return r


def test_overlong_values_are_echoed_truncated_and_the_batch_still_parses() -> None:
    long_currency = "Z" * 100_000
    long_id = "a" * 5_000  # valid characters, too long
    reqs = [_request(currency=long_currency), _request(application_id=long_id), _request(application_id="bad id\u00e9")]
    data = pb.AuthorizeBatchRequest(requests=reqs).SerializeToString()
    d = wire.decode_batch(data, 0.0, 10, Code.INVALID_ARGUMENT)
    assert len(d.errors) == 3
    by_pos = {e.position: e for e in d.errors}
    assert by_pos[0].application_id == b"app-1"  # a valid id is echoed
    assert len(by_pos[0].message) < 200 and by_pos[0].message.endswith("...")
    assert by_pos[1].application_id == b"" and by_pos[2].application_id == b""  # invalid ids are not
    out = pb.AuthorizeBatchResponse.FromString(wire.encode_batch(3, None, d.index, [e.as_tuple() for e in d.errors]))
    assert [r.error.field for r in out.responses] == [
        "requests[0].requested_amount.currency", "requests[1].application_id", "requests[2].application_id"
    ]
    assert out.responses[0].application_id == "app-1" and "Z" * 128 + "'..." in out.responses[0].error.message
    assert all(len(r.SerializeToString()) < 1024 for r in out.responses)


def test_echoed_values_are_bounded_in_every_error_writer() -> None:
    huge = "m" * 100_000
    one = pb.AuthorizeResponse.FromString(wire.encode_error(b"x" * 65, 3, "f" * 5000, huge))
    assert one.application_id == "" and len(one.error.message) == wire.MAX_TEXT and one.error.message.endswith("...")
    assert len(one.error.field) == wire.MAX_TEXT
    assert pb.AuthorizeResponse.FromString(wire.encode_error(b"ok-id", 3, "", "m")).application_id == "ok-id"
    raw = pb.AuthorizeResponse.FromString(wire.encode_error(b"\xff\x00bad", 3, "", "m"))
    assert raw.application_id == ""
    batch = wire.encode_batch(1, None, np.zeros(0, np.int32), [(0, b"a" * 70, 14, "", huge, b"")])
    item = pb.AuthorizeBatchResponse.FromString(batch).responses[0]
    assert item.application_id == "" and item.error.code == 14 and len(item.error.message) == wire.MAX_TEXT
    # A decode violation on the id itself: the codec leaves the id out of the Violation.
    with pytest.raises(wire.Violation) as info:
        wire.requests.decode_one(_request(application_id="no spaces allowed").SerializeToString(), 0.0)
    assert info.value.app == b""
    with pytest.raises(wire.Violation) as info:
        wire.requests.decode_one(_request(currency="Q" * 10_000).SerializeToString(), 0.0)
    assert info.value.app == b"app-1" and len(wire.describe(info.value).message) < 200


def test_a_replica_message_and_long_reasons_still_encode() -> None:
    """Texts of a few KiB (a reason of 4 KiB, 16 of them): items past 16 KiB encode and parse."""
    long_reasons = (("R" * 100, "d" * 4000),)
    rows = _rows(2, reason=0)
    rows["status"][1] = 14
    enc = wire.encoder(DecisionBatch(rows, long_reasons, message="x" * 50_000))
    out = pb.AuthorizeBatchResponse.FromString(wire.encode_batch(2, enc, np.arange(2, dtype=np.int32), []))
    assert len(out.responses[0].reasons) == 16 and out.responses[0].reasons[0].description == "d" * 4000
    assert out.responses[1].error.code == 14 and len(out.responses[1].error.message) == wire.MAX_TEXT
    assert pb.AuthorizeResponse.FromString(wire.encode_one(enc, 0)) == out.responses[0]
    with pytest.raises(wire.EncodeError, match="at most"):
        wire.encoder(DecisionBatch(rows, (("R", "d" * 5000),)))
