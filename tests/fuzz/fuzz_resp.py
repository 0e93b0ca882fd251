"""Fuzz target "resp": the compiled RESP2 reply decoders (``features.stores.redis._resp``).

    .venv/bin/python tests/fuzz/fuzz_resp.py -runs=1000000      # atheris (libFuzzer flags)
    .venv/bin/python tests/fuzz/fuzz_resp.py --runs 1000000     # the same, as tests/fuzz/run.py calls it
    .venv/bin/python tests/fuzz/fuzz_resp.py --runs 100000 --mutate   # no atheris: plain mutation

Each input's first byte picks how many replies the decoders expect and where the stream
is cut; the rest is the byte stream a Redis server would send. It goes through
``ReplyCollector``, ``ReplyCounter`` and ``HmgetDecoder`` twice, whole and in two pieces
(as replies arrive from a socket). Allowed outcomes: a position within the bytes given,
or ``RespProtocolError`` / ``RespServerError`` / ``RespValueError``; and both ways of
feeding must agree. Anything else (another exception, a signal) is a crash.

The extension is not compiled with coverage instrumentation (no clang here), so atheris
steers by this file's own branches (which outcome, which message) and libFuzzer's
mutations, seeded from real replies (``seeds()``) and the hostile shapes the parser bounds.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from features.stores.redis import _resp

NAME = "resp"
TYPED = (_resp.RespProtocolError, _resp.RespServerError, _resp.RespValueError)
_KINDS = np.array([_resp.KIND_NUMBER, _resp.KIND_NUMBER, _resp.KIND_TAGS, _resp.KIND_TS_SECONDS,
                   _resp.KIND_TS_NANOS], np.int32)
_COLS = np.array([0, 1, 0, 0, 1], np.int32)


class Crash(Exception):
    """An outcome the decoders must never have."""


def _bulk(v: bytes | None) -> bytes:
    return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)


def seeds() -> list[bytes]:
    """Real replies (HMGET rows in Feast's layout, control traffic) and bounded hostile shapes."""
    row = b"*5\r\n" + _bulk(b"\x35\x00\x00\x80\x3f") + _bulk(b"\x20\x07") + _bulk(b"\x0a\x02xy") \
        + _bulk(b"\x08\x80\xa3\x05") + _bulk(b"\x08\x01\x10\x05")
    empty = b"*5\r\n" + b"$-1\r\n" * 5
    scan = b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    control = [b"+OK\r\n", b"-NOSCRIPT No matching script\r\n", b":42\r\n", b":-9223372036854775808\r\n",
               b"$5\r\nhello\r\n", b"$0\r\n\r\n", b"*-1\r\n", b"*0\r\n", scan]
    hostile = [b"$9223372036854775807\r\n", b"*4611686018427387904\r\n", b"*1\r\n" * 40 + b":1\r\n",
               b"$-2\r\n", b"$12x\r\n", b"%1\r\n+a\r\n+b\r\n", b"$3\r\nabcXY"]
    out = [b"\x03" + row + empty + row, b"\x01" + empty, b"\x02" + row[:17] + row[17:]]
    out += [bytes([i]) + c for i, c in enumerate(control)]
    out += [b"\x00" + h for h in hostile]
    out.append(b"\x04" + b"".join(control))
    return out


def _outputs(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.full((rows, 2), np.nan, np.float32), np.zeros((rows, 8), np.uint8), np.zeros((rows, 2), np.int64)


def _feed(make: object, buf: bytearray, cut: int) -> tuple[object, ...]:
    """Outcome of feeding ``buf`` whole (cut < 0) or as ``buf[:cut]`` then the rest."""
    decoder = make()  # type: ignore[operator]
    pieces = [len(buf)] if cut < 0 else [cut, len(buf)]
    pos = 0
    try:
        for end in pieces:
            got = decoder.feed(buf, pos, end)
            if not pos <= got <= end:
                raise Crash(f"{type(decoder).__name__}.feed returned {got} outside [{pos}, {end}]")
            pos = got
    except TYPED as exc:
        return type(exc).__name__, _state(decoder)
    return "ok", pos, _state(decoder)


def _state(decoder: object) -> object:
    if isinstance(decoder, _resp.ReplyCollector):
        return repr(decoder.replies)
    if isinstance(decoder, _resp.ReplyCounter):
        return decoder.seen
    assert isinstance(decoder, _resp.HmgetDecoder)
    return decoder.row


def one_input(data: bytes) -> str:
    """Run one input through every decoder; raises ``Crash`` (or anything else) on a bug."""
    if not data:
        return "empty"
    expected = 1 + data[0] % 4
    buf = bytearray(data[1:])
    cut = (data[0] * 131) % (len(buf) + 1)
    makers = (lambda: _resp.ReplyCollector(expected, 64), lambda: _resp.ReplyCounter(expected),
              lambda: _resp.HmgetDecoder(_KINDS, _COLS, *_outputs(expected)))
    outcome = "ok"
    for make in makers:
        whole, pieces = _feed(make, buf, -1), _feed(make, buf, cut)
        # Whichever way the bytes came, the same replies and the same end (an error may
        # surface one feed later in pieces, but it is the same error after the same replies).
        if whole != pieces:
            raise Crash(f"{type(make()).__name__}: whole {whole!r:.200} but in pieces {pieces!r:.200}")
        if whole[0] != "ok":
            outcome = str(whole[0])
    return outcome


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Byte flips, inserts, deletes, and edits of the numbers in headers (lengths, counts)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = bytes([rng.choice(b"$*:+-\r\n0123456789")])
        elif op == 2 and b:
            del b[i : i + rng.randint(1, 8)]
        elif op == 3:
            number = rng.choice([b"-1", b"0", b"1", b"-2", b"9223372036854775807", b"99999999999999999999",
                                 str(rng.randint(0, 1 << 40)).encode(), b"-0", b""])
            b[i:i] = bytes([rng.choice(b"$*:")]) + number + b"\r\n"
        else:
            b = b[:i]
    return bytes(b)


def run_mutation(runs: int, seed: int) -> int:
    """The fallback when atheris is not installed: random mutation of the seed corpus."""
    import time

    rng = random.Random(seed)
    corpus = seeds()
    crashes = 0
    t0 = time.perf_counter()
    for _ in range(runs):
        data = mutate(rng.choice(corpus), rng)
        try:
            if one_input(data) == "ok" and len(corpus) < 1024:
                corpus.append(data)
        except Exception as exc:
            crashes += 1
            print(f"CRASH {type(exc).__name__}: {exc}\n  input {data.hex()}", flush=True)
    seconds = time.perf_counter() - t0
    print(f"target {NAME}: inputs {runs} crashes {crashes} seconds {seconds:.1f} ({runs / seconds:,.0f}/s)")
    return 1 if crashes else 0


def run_atheris(argv: list[str]) -> None:
    import atheris

    module = sys.modules[__name__]
    work = Path(tempfile.mkdtemp(prefix="fuzz-resp-"))
    (work / "corpus").mkdir()
    (work / "seeds").mkdir()
    for i, s in enumerate(seeds()):
        one_input(s)  # the seeds themselves must pass
        (work / "seeds" / f"seed-{i}").write_bytes(s)
    flags = [a for a in argv[1:] if a.startswith("-")]
    dirs = [a for a in argv[1:] if not a.startswith("-")] or [str(work / "corpus"), str(work / "seeds")]
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append("-max_len=8192")
    # The harness's own branches are the coverage atheris sees (the extension has none).
    for name in ("one_input", "_feed", "_state"):
        setattr(module, name, atheris.instrument_func(getattr(module, name)))
    # New inputs go to the first directory: a scratch one, never the repository.
    atheris.Setup([argv[0], *flags, *dirs], module.one_input)
    atheris.Fuzz()


def _libfuzzer_argv(argv: list[str]) -> tuple[list[str], bool, int]:
    """Accept the driver's ``--runs N [--seed S] [--mutate]`` as well as libFuzzer's ``-runs=N``."""
    out, mutation, seed, i = [argv[0]], False, 1, 1
    while i < len(argv):
        a = argv[i]
        if a in ("--runs", "--seed") and i + 1 < len(argv):
            if a == "--runs":
                out.append(f"-runs={argv[i + 1]}")
            else:
                seed = int(argv[i + 1])
                out.append(f"-seed={seed}")
            i += 2
            continue
        if a == "--mutate":
            mutation = True
        else:
            out.append(a)
        i += 1
    return out, mutation, seed


def main() -> None:
    argv, mutation, seed = _libfuzzer_argv(sys.argv)
    runs = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("-runs=")), 100_000)
    if not mutation:
        try:
            import atheris  # noqa: F401
        except ImportError:
            mutation = True
    if mutation:
        sys.exit(run_mutation(runs, seed))
    run_atheris(argv)


if __name__ == "__main__":
    main()
