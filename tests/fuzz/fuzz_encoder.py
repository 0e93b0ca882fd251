"""Fuzz target "encoder": replica answers through ``wire.encoder`` and the C response encoders.

    .venv/bin/python tests/fuzz/fuzz_encoder.py --runs 1000000            # atheris when installed
    .venv/bin/python tests/fuzz/fuzz_encoder.py --runs 1000000 --mutate   # plain seeded mutation
    .venv/bin/python -m tests.fuzz.run encoder --runs 1000000             # through the driver

An input is a header (rows, reason-table size and text lengths, the message's length, the
batch call's total, offset and item errors) and then raw ``DECISION_DTYPE`` bytes: any
status, index, string (with or without NUL padding, UTF-8 or not) a broken replica could
send. Seeds are consistent answers; the mutator also writes boundary values into named
columns. Allowed outcomes: ``EncodeError`` from ``wire.encoder`` (the answer is refused
whole) or from ``encode_*`` (a call that does not fit the rows), or bytes that parse with
the protobuf classes, one response per request. Anything else (another exception, a
signal) is a crash.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
from google.protobuf.message import DecodeError

from creditauth.v1 import authorization_pb2 as pb
from services.frontend import wire
from services.schema.records import DECISION_DTYPE, DecisionBatch, blank_decisions
from tests.fuzz.loop import Target, main

NAME = "encoder"
HEADER = 8
SIZE = DECISION_DTYPE.itemsize
# Boundary values per column, written by the mutator at the column's offset.
_EDGES: dict[str, list[int]] = {
    "status": [0, 0, 0, 1, 4, 16, 17, -1, 127, -128],
    "currency": [0, 6, 7, -1, -2, 127],
    "reason": [-1, 0, 1, 11, 12, -2, 32767, -32768],
    "decision": [0, 1, 3, -1, 127],
}


class Crash(Exception):
    """An outcome the encoder must never have."""


def _good_rows(n: int, reasons: int) -> np.ndarray:
    rows = blank_decisions(n)
    rows["application_id"] = [b"app-%d" % i for i in range(n)]
    rows["decision_id"] = [b"d-%040d" % i for i in range(n)]
    rows["decision"], rows["approved_minor"], rows["apr_bps"], rows["risk_grade"] = 1, 500_000, 830, b"B"
    rows["pd"], rows["feature_age_s"], rows["currency"] = 0.031, 3600.0, 1
    rows["reason"][:, :reasons] = np.arange(reasons)
    rows["model_version"], rows["policy_version"] = b"m-1", b"p-1"
    if n > 1:
        rows["status"][n - 1] = 4
    return rows


def seeds() -> list[bytes]:
    out = []
    for n, reasons, table in ((1, 0, 0), (3, 2, 2), (8, 4, 12), (2, 16, 16)):
        header = bytes([n, table, 3, 1, 0, 0, 0, 0])
        out.append(header + _good_rows(n, reasons).tobytes())
    return out


def _answer(data: bytes) -> tuple[DecisionBatch, int, int, list[tuple[int, bytes, int, str, str]]]:
    """The header's call and the rows' bytes (cut or padded to whole records)."""
    h = data[:HEADER].ljust(HEADER, b"\0")
    body = data[HEADER:]
    n = max(1, len(body) // SIZE) if body else 0
    rows = np.frombuffer(body[: n * SIZE].ljust(n * SIZE, b"\0"), DECISION_DTYPE).copy()
    text = "é" * (h[2] * 40) if h[2] & 0x80 else "r" * (h[2] * 40)
    table = tuple((f"R{i}" + text[: i * 13], f"reason {i} " + text) for i in range(h[1] % 40))
    message = "m" * (h[3] * 97)
    total = len(rows) + h[4] % 5 - 1  # sometimes one short, mostly room for item errors
    offset = h[5] % 4 - 1 if h[5] & 0x80 else 0
    errors = [(len(rows) + k, bytes(data[HEADER + k : HEADER + k + h[6] % 90]), 1 + (h[7] + k) % 20, "f", text)
              for k in range(max(0, total - len(rows)))]
    return DecisionBatch(rows, table, message), total, offset, errors


def one_input(data: bytes) -> str:
    """One answer through the encoders; raises ``Crash`` (or anything else) on a bug."""
    resp, total, offset, errors = _answer(data)
    try:
        enc = wire.encoder(resp)
    except wire.EncodeError:
        return "refused"
    for i in range(len(resp)):
        try:
            pb.AuthorizeResponse.FromString(wire.encode_one(enc, i))
        except wire.EncodeError:
            pass  # a string that is not UTF-8: refused when written
        except DecodeError as exc:
            raise Crash(f"row {i} encodes to bytes protobuf cannot parse: {exc}") from None
    index = np.arange(min(len(resp), max(total, 0)), dtype=np.int32)
    try:
        out = wire.encode_batch(total, enc, index, errors, offset)
    except wire.EncodeError:
        return "call refused"
    try:
        parsed = pb.AuthorizeBatchResponse.FromString(out).responses
    except DecodeError as exc:
        raise Crash(f"a batch encodes to bytes protobuf cannot parse: {exc}") from None
    if len(parsed) != total or any(len(r.error.message) > wire.MAX_TEXT for r in parsed):
        raise Crash(f"{len(parsed)} responses for {total} requests, or an unbounded error text")
    return "ok"


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    """Boundary values into columns, byte flips and fills, header edits, splices of rows."""
    b = bytearray(data.ljust(HEADER, b"\0"))
    n = max(0, (len(b) - HEADER) // SIZE)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and n:  # a boundary value into a named column of a row
            name = rng.choice(list(_EDGES))
            sub, off = DECISION_DTYPE[name], DECISION_DTYPE.fields[name][1]  # type: ignore[index]
            width = sub.base.itemsize
            at = HEADER + rng.randrange(n) * SIZE + off + (rng.randrange(sub.shape[0]) * width if sub.shape else 0)
            b[at : at + width] = int(rng.choice(_EDGES[name])).to_bytes(width, "little", signed=True)
        elif op == 1 and len(b) > HEADER:
            b[rng.randrange(HEADER, len(b))] ^= 1 << rng.randrange(8)
        elif op == 2 and len(b) > HEADER:  # a run of one byte: strings without NUL, or 0xFF
            at = rng.randrange(HEADER, len(b))
            b[at : at + rng.randint(1, 80)] = bytes([rng.choice([0x41, 0xFF, 0x00, 0xC3, 0x80])]) * rng.randint(1, 80)
        elif op == 3:
            b = b.ljust(HEADER, b"\0")
            b[rng.randrange(HEADER)] = rng.randrange(256)
        elif op == 4:  # splice another answer's rows
            other = rng.choice(corpus)
            b[HEADER + SIZE * rng.randint(0, n) :] = other[HEADER:]
        else:
            b = b[: rng.randrange(len(b) + 1)]
    return bytes(b[: HEADER + 16 * SIZE])


def _keep(outcome: str, rng: random.Random) -> bool:
    return outcome == "ok" and rng.random() < 0.05


def _check_seed(i: int, outcome: str) -> None:
    if outcome != "ok":
        raise Crash(f"seed {i} is not a consistent answer")


TARGET = Target(
    NAME, __name__, seeds, one_input, mutate, _keep, corpus_max=1024, max_len=HEADER + 16 * SIZE,
    instrument=("one_input", "_answer"), check_seed=_check_seed,
)


if __name__ == "__main__":
    main(TARGET)
