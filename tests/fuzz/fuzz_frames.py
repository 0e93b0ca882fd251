"""Fuzz target "frames": the direct channel's frame reader, payload decoder and the replica's
batch check, fed mutated frames. Anything but the documented refusals is a crash.

    python tests/fuzz/fuzz_frames.py --runs 1000000 [--seed S] [--atheris]

Inputs start from real frames (request and decision batches of several sizes, control
ops) and are mutated bytewise (flips, interesting values, inserts, deletes, truncations,
splices) or structurally (the JSON header rewritten: hostile dtypes, shapes, offsets,
lengths). Each input goes through ``frames.read_frame`` (with a small frame limit),
``frames.decode`` as a request and as a decision batch, ``validate.screen`` for a
decoded request batch, and ``frames.error_of``. Allowed outcomes: a value, ``FrameError``,
``IncompleteReadError`` (a short frame), ``InvalidRequest`` (not request records).
``--atheris`` runs the same target under atheris (coverage-guided) instead.

For a driver (tests/fuzz/run.py): ``NAME``, ``seeds()``, ``mutate(data, rng)`` and
``one_input(data)`` (raises on a crash).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import struct
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from services.errors import InvalidRequest
from services.runtime.channel import Op, frames
from services.schema import validate
from services.schema.codes import Code
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch, blank_decisions

NAME = "frames"
LIMIT = 1 << 20  # the frame limit the reader is given: hostile lengths must be refused by it
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x30, 0x5B, 0x7B)
_HOSTILE: tuple[Any, ...] = (
    "O", "|O", "<M8[s]", "<m8", "|V8", "|S0", "<U0", "V", "bool", "<f16", "|b1", ">i8", "<i8",
    [["a", "O"]], [["", "|V4"]], [["a", "<i8", [-1]]], [["a", "<i8"], ["a", "<i8"]], [], 7, None, [[1, 2]],
    [["x", [["y", [["z", [["w", [["v", [["u", "<i1"]]]]]]]]]]]],
)
_NUMBERS: tuple[Any, ...] = (-1, 0, 1, 7, 8, 2**31, 2**63, 10**30, -(2**63), 1.5, True, None, "3", [])


def _batch(n: int) -> RequestBatch:
    rows = np.zeros(n, REQUEST_DTYPE)
    rows["application_id"] = [f"app-{i}".encode() for i in range(n)]
    rows["merchant_id"] = [f"M{i}".encode() for i in range(n)]
    rows["amount_minor"] = 1000
    rows["term_months"] = 12
    rows["product"] = 1
    rows["channel"] = 1
    rows["declared_revenue_minor"] = np.nan
    rows["deadline"] = 2e9
    return RequestBatch(rows, trace="00-abc-def-01")


def _bytes(parts: list[frames.Part]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def seeds() -> list[bytes]:
    """Real frames: request and decision batches, control ops, an error."""
    out = []
    for n in (0, 1, 3, 17):
        out.append(_bytes(frames.frame(n + 1, Op.SCORE, frames.encode(_batch(n)))))
        rows = blank_decisions(n)
        out.append(_bytes(frames.frame(n + 1, Op.RESULT, frames.encode(DecisionBatch(rows, (("R", "d"),))))))
    out.append(_bytes(frames.frame(9, Op.PING, frames.json_payload({}))))
    out.append(_bytes(frames.frame(9, Op.ERROR, frames.error_payload(Code.INTERNAL, "x"))))
    return out


# -- mutations -------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random, pool: list[bytes] | None = None) -> bytes:
    """One to four random edits of ``data`` (a structural one a quarter of the time)."""
    if rng.random() < 0.25:
        edited = _mutate_header(data, rng)
        if edited is not None:
            data = edited
            if rng.random() < 0.5:
                return data
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        _byte_edit(buf, rng, pool)
    return bytes(buf)


def _byte_edit(buf: bytearray, rng: random.Random, pool: list[bytes] | None) -> None:
    kind = rng.randrange(7)
    at = rng.randrange(len(buf) + 1)
    if kind == 0 and buf:
        buf[at % len(buf)] ^= 1 << rng.randrange(8)
    elif kind == 1 and buf:
        buf[at % len(buf)] = rng.choice(_INTERESTING)
    elif kind == 2:
        buf[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 3:
        del buf[at : at + rng.randint(1, 64)]
    elif kind == 4:
        del buf[at:]
    elif kind == 5 and len(buf) >= 4:  # a length field, rewritten
        pos = rng.choice((0, 13, at % max(1, len(buf) - 4)))
        buf[pos : pos + 4] = struct.pack("<I", rng.choice((0, 1, 8, LIMIT, LIMIT + 1, 2**31, 2**32 - 1, len(buf))))
    elif pool:
        other = rng.choice(pool)
        cut = rng.randrange(len(other) + 1)
        buf[at:] = other[cut:]


def _mutate_header(data: bytes, rng: random.Random) -> bytes | None:
    """Rewrite the batch header's JSON: one array entry or metadata value made hostile."""
    head = frames.FRAME.size
    if len(data) < head + 4:
        return None
    (hlen,) = struct.unpack_from("<I", data, head)
    try:
        header = json.loads(data[head + 4 : head + 4 + hlen])
        arrays = header["a"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(arrays, list) or not arrays:
        return None
    entry = rng.choice(arrays)
    slot = rng.randrange(4)
    if slot == 1:
        entry[1] = rng.choice(_HOSTILE) if rng.random() < 0.7 else _dtype_edit(entry[1], rng)
    elif slot == 2:
        entry[2] = rng.choice(([rng.choice(_NUMBERS)], [], [2, 2], [10**9], "3", [0]))
    elif slot == 3:
        entry[3] = rng.choice(_NUMBERS)
    else:
        header["m"] = rng.choice(({"trace": 5}, {"rows": 1}, {"reason_table": [[1]]}, {"stage_s": "x"}, []))
    text = json.dumps(header).encode()
    payload = struct.pack("<I", len(text)) + text + data[head + 4 + hlen :]
    call_id, op = struct.unpack_from("<QB", data, 4)
    return struct.pack("<IQB", len(payload) + 9, call_id, op) + payload


def _dtype_edit(spec: object, rng: random.Random) -> object:
    if isinstance(spec, list) and spec:
        field = list(rng.choice(spec))
        if len(field) >= 2:
            field[1] = rng.choice(_HOSTILE)
        if rng.random() < 0.3:
            field.append(rng.choice(([2], [-1], [0], "x", [10**12])))
        return [field if f is spec[0] else f for f in spec]
    return rng.choice(_HOSTILE)


# -- the target ------------------------------------------------------------------------


class Crash(AssertionError):
    """An outcome the channel's contract does not allow."""


def _read_frame(data: bytes) -> tuple[int, int, bytes] | None:
    """``frames.read_frame`` over ``data`` then EOF, driven without a loop turn (nothing waits)."""
    reader = asyncio.StreamReader(limit=LIMIT)
    reader.feed_data(data)
    reader.feed_eof()
    coro = frames.read_frame(reader, LIMIT)
    try:
        coro.send(None)
    except StopIteration as done:
        result: tuple[int, int, bytes] = done.value
        return result
    except (frames.FrameError, asyncio.IncompleteReadError):
        return None
    coro.close()
    raise Crash("read_frame waited on a reader that holds all its data and EOF")


def _score(batch: RequestBatch) -> DecisionBatch:
    rows = blank_decisions(len(batch))
    rows["decision"] = 1
    return DecisionBatch(rows)


def one_input(data: bytes) -> str:
    """Run one input through the channel's decoding; the outcome's name, or raise ``Crash``."""
    got = _read_frame(data)
    if got is None:
        return "frame refused"
    _, _, payload = got
    if len(payload) > LIMIT:
        raise Crash(f"read_frame returned {len(payload)} bytes over its limit {LIMIT}")
    frames.error_of(payload)  # never raises: an undecodable error is INTERNAL
    with contextlib.suppress(frames.FrameError):
        frames.decode(DecisionBatch, memoryview(payload))
    try:
        batch, _ = frames.decode(RequestBatch, memoryview(payload))
    except frames.FrameError:
        return "payload refused"
    try:
        out = validate.screen(batch, _score)
    except InvalidRequest:
        return "batch refused"
    if len(out) != len(batch) or not np.isin(out.status, (0, Code.INVALID_ARGUMENT)).all():
        raise Crash("screen answered a batch of another size or with another status")
    return "rows refused" if out.message else "scored"


def _check(data: bytes) -> tuple[str, BaseException | None]:
    try:
        return one_input(data), None
    except Exception as exc:  # the fuzzer's whole point: anything unexpected is reported
        return "crash", exc


# -- drivers ---------------------------------------------------------------------------


def run(runs: int, seed: int, out: Path | None) -> int:
    rng = random.Random(seed)
    pool = seeds()
    corpus = list(pool)
    outcomes: Counter[str] = Counter()
    crashes: dict[str, bytes] = {}
    t0 = time.perf_counter()
    for _ in range(runs):
        data = mutate(rng.choice(corpus), rng, pool)
        outcome, exc = _check(data)
        outcomes[outcome] += 1
        if exc is not None:
            key = f"{type(exc).__name__}: {str(exc)[:120]}"
            if key not in crashes:
                crashes[key] = data
                print(f"CRASH {key}\n  input {data[:96].hex()}...", flush=True)
                traceback.print_exception(exc, file=sys.stdout)
        elif outcome in ("scored", "rows refused") and len(corpus) < 512:
            corpus.append(data)  # decodable mutants are the best parents
    seconds = time.perf_counter() - t0
    if out is not None and crashes:
        out.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(crashes.values()):
            (out / f"frames-crash-{i}.bin").write_bytes(data)
    print(f"target {NAME}: inputs {runs} crashes {outcomes['crash']} "
          f"distinct {len(crashes)} seconds {seconds:.1f} ({runs / seconds:,.0f}/s)")
    print("outcomes " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return 1 if crashes else 0


def run_atheris(runs: int) -> None:
    import atheris

    def target(data: bytes) -> None:
        one_input(data)

    for s in seeds():  # atheris starts from nothing: give it one real frame to grow from
        one_input(s)
    atheris.Setup([sys.argv[0], f"-runs={runs}"], target)
    atheris.Fuzz()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write crashing inputs here")
    ap.add_argument("--atheris", action="store_true", help="coverage-guided (atheris) instead of random mutation")
    args = ap.parse_args()
    if args.atheris:
        run_atheris(args.runs)
    sys.exit(run(args.runs, args.seed, args.out))


if __name__ == "__main__":
    main()
