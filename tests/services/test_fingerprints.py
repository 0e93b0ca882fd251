"""Request fingerprints: the idempotency store keeps them, so they must never change for the
same request, whichever path (a few rows on Python ints, a batch vectorized) computes them."""

from __future__ import annotations

import numpy as np

from services.schema.records import _FINGERPRINTED, _SMALL, REQUEST_DTYPE, fingerprints


def _reference(rows: np.ndarray) -> np.ndarray:
    """The definition, column by column: little-endian 64-bit words, zero-padded, mixed in order."""
    out = []
    for r in rows:
        h = 0
        for name in _FINGERPRINTED:
            raw = np.ascontiguousarray(r[name]).tobytes()
            raw += bytes(-len(raw) % 8)
            for k in range(0, len(raw), 8):
                h = ((h ^ int.from_bytes(raw[k:k + 8], "little")) * 0x9E3779B97F4A7C15) % 2**64
                h ^= h >> 29
        out.append(h)
    return np.array(out, dtype=np.uint64)


def _random(n: int, seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, (n, REQUEST_DTYPE.itemsize), dtype=np.uint8)
    return raw.view(REQUEST_DTYPE).reshape(n)


def test_both_paths_compute_the_definition() -> None:
    for n in (0, 1, 2, _SMALL, _SMALL + 1, 100):
        rows = _random(n, n)
        assert (fingerprints(rows) == _reference(rows)).all(), n
        assert (fingerprints(rows[::3]) == _reference(rows[::3])).all(), "a strided view too"


def test_a_row_has_the_same_fingerprint_alone_and_in_a_batch() -> None:
    rows = _random(40, 1)
    whole = fingerprints(rows)
    assert [int(fingerprints(rows[k:k + 1])[0]) for k in range(40)] == whole.tolist()
    assert len(set(whole.tolist())) == 40


def test_only_what_was_asked_counts() -> None:
    rows = _random(2, 5)
    rows[1] = rows[0]
    rows["application_id"][1] = b"another-id"
    rows["deadline"][1] = rows["deadline"][0] + 10
    a, b = fingerprints(rows)
    assert a == b
    rows["amount_minor"][1] += 1
    a, b = fingerprints(rows)
    assert a != b
