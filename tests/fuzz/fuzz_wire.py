"""Fuzz target "wire": the compiled request decoders (``services.frontend._wire.RequestCodec``).

    .venv/bin/python tests/fuzz/fuzz_wire.py --runs 1000000            # atheris when installed
    .venv/bin/python tests/fuzz/fuzz_wire.py --runs 1000000 --mutate   # plain seeded mutation
    .venv/bin/python -m tests.fuzz.run wire --runs 1000000             # through the driver

An input's first byte picks the decoder (``decode_one`` or ``decode_batch``, and the batch's
item limit); the rest is the message. Seeds are valid ``AuthorizeRequest`` /
``AuthorizeBatchRequest`` encodings made with the protobuf classes, plus refused ones.
Allowed outcomes: a record (or a batch of them), ``WireError``, ``Violation``, or the item
count over the limit. Checked on every outcome: a record is ``REQUEST_DTYPE`` sized and agrees
with protobuf's parse on the ids and the amount; a refusal echoes no invalid id and quotes
at most ``MAX_QUOTE`` characters; the batch's answer (every item an error) encodes and
parses with the protobuf classes. Anything else (another exception, a signal) is a crash.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
from google.protobuf.message import DecodeError

from creditauth.v1 import authorization_pb2 as pb
from services.errors import InvalidRequest
from services.frontend import wire
from services.schema.records import REQUEST_DTYPE
from tests.fuzz.loop import Target, main

NAME = "wire"
_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,64}")
_INTERESTING = [0, 1, 2, 7, 8, 63, 64, 65, 127, 128, 255, 16383, 16384, 1 << 31, (1 << 63) - 1, (1 << 64) - 1]


class Crash(Exception):
    """An outcome the decoders must never have."""


def _request(i: int, **over: object) -> pb.AuthorizeRequest:
    r = pb.AuthorizeRequest(
        application_id=f"app-{i}", merchant_id=f"M{i:08d}", term_months=1 + i % 60, product=1 + i % 4,
        channel=1 + i % 5,
    )
    r.requested_amount.amount_minor = 1000 + 997 * i
    r.requested_amount.currency = ["CNY", "USD", "EUR", "JPY"][i % 4]
    if i % 2:
        r.declared_monthly_revenue_minor = 50_000 * i
    for k, v in over.items():
        setattr(r, k, v)
    return r


def seeds() -> list[bytes]:
    """Valid requests and batches, and ones the rules refuse, each behind a decoder byte."""
    good = [_request(i) for i in range(6)]
    bad = [_request(9, application_id=""), _request(10, term_months=0), _request(11, product=99),
           _request(12, application_id="x" * 80), _request(13, merchant_id="no spaces")]
    bad.append(_request(14))
    bad[-1].requested_amount.currency = "ZZZ"
    ones = [bytes([2 * k]) + r.SerializeToString() for k, r in enumerate(good + bad)]
    batches = [pb.AuthorizeBatchRequest(requests=good), pb.AuthorizeBatchRequest(requests=good[:2] + bad),
               pb.AuthorizeBatchRequest(requests=[]), pb.AuthorizeBatchRequest(requests=bad * 3)]
    return ones + [bytes([2 * k + 1]) + b.SerializeToString() for k, b in enumerate(batches)]


def _check_violation(v: wire.Violation) -> None:
    if v.app and not _ID.fullmatch(v.app):
        raise Crash(f"an invalid application id is echoed: {v.app[:80]!r}")
    e = wire.describe(v)
    if len(e.message) > wire.MAX_QUOTE + 120:
        raise Crash(f"a refusal of {len(e.message)} characters: {e.message[:200]!r}")


def _check_record(record: bytes, data: bytes) -> None:
    if len(record) != REQUEST_DTYPE.itemsize:
        raise Crash(f"a record of {len(record)} bytes")
    try:
        ref = pb.AuthorizeRequest.FromString(data)
    except DecodeError:
        return  # protobuf is stricter on field 0 and UTF-8 in unknown fields; no reference then
    row = np.frombuffer(record, REQUEST_DTYPE)[0]
    got = (row["application_id"], row["merchant_id"], int(row["amount_minor"]))
    want = (ref.application_id.encode(), ref.merchant_id.encode(), ref.requested_amount.amount_minor)
    if got != want:
        raise Crash(f"decoded {got!r:.200} but protobuf reads {want!r:.200}")


def _check_batch(data: bytes, limit: int) -> str:
    try:
        d = wire.decode_batch(data, 1.0, limit, 3)
    except wire.WireError:
        return "WireError"
    except InvalidRequest:
        return "too many"
    if len(d.index) + len(d.errors) != d.total or np.any(np.diff(d.index) <= 0):
        raise Crash(f"{len(d.index)} records and {len(d.errors)} errors for {d.total} items")
    errors = [e.as_tuple() for e in d.errors]
    apps = d.batch.rows["application_id"].tolist()
    errors += [(int(p), a, 14, "", "x" * 3000, b"") for p, a in zip(d.index.tolist(), apps, strict=True)]
    out = pb.AuthorizeBatchResponse.FromString(wire.encode_batch(d.total, None, d.index[:0], errors))
    if len(out.responses) != d.total or any(len(r.error.message) > wire.MAX_TEXT for r in out.responses):
        raise Crash("the batch's answer does not parse to one bounded error per item")
    return "ok" if not d.errors else "violations"


def one_input(data: bytes) -> str:
    """One input through a decoder; raises ``Crash`` (or anything else) on a bug."""
    if not data:
        return "empty"
    mode, body = data[0], data[1:]
    if mode & 1:
        return _check_batch(body, 1 + (mode >> 1) % 64)
    try:
        _check_record(wire.requests.decode_one(body, 1.0, b"caller-%d" % (mode >> 1)), body)
    except wire.WireError:
        return "WireError"
    except wire.Violation as v:
        _check_violation(v)
        return "Violation"
    return "ok"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    """Byte flips, inserts, deletes, varint and length edits, field insertions and splices."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(1, len(b) + 1) if len(b) > 1 else len(b)
        if op == 0 and len(b) > 1:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = bytes([rng.randrange(256)])
        elif op == 2 and len(b) > 1:
            del b[i : i + rng.randint(1, 8)]
        elif op == 3:  # a varint where a length or a value was
            b[i : i + rng.randint(0, 2)] = _varint(rng.choice(_INTERESTING) % (1 << 64))
        elif op == 4:  # a whole field: any number, any wire type, an interesting payload
            key = (rng.randint(0, 20) << 3) | rng.choice([0, 1, 2, 5, 3, 7])
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 70)))
            b[i:i] = _varint(key) + (_varint(len(body)) + body if key & 7 == 2 else _varint(rng.choice(_INTERESTING)))
        elif op == 5:  # splice another input's tail
            other = rng.choice(corpus)
            b[i:] = other[rng.randrange(1, len(other) + 1) if len(other) > 1 else 1 :]
        else:
            b = b[: max(1, i)]
    return bytes(b)


def _keep(outcome: str, rng: random.Random) -> bool:
    return outcome in ("ok", "violations")  # inputs that got deep into the decoder


TARGET = Target(
    NAME, __name__, seeds, one_input, mutate, _keep, corpus_max=2048, max_len=4096,
    instrument=("one_input", "_check_batch", "_check_record", "_check_violation"),
)


if __name__ == "__main__":
    main(TARGET)
