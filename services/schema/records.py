"""Batches as records: one fixed-size numpy record per request and per decision.

The record dtypes are derived from the declaration (``services.schema.columns``). A batch
is one structured array, so it crosses the direct channel as one buffer (no per-item
objects), a unary request is one ``bytes`` record that the batcher joins with others
without touching numpy per request, the C codec reads and writes fields at the
offsets of these dtypes, and the idempotency store keeps a decision as its record's bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from services.schema.columns import DECISION, MAX_ID, MAX_REASONS, REQUEST

Rows = npt.NDArray[np.void]


def _dtype(columns: Sequence[Any]) -> np.dtype[np.void]:
    spec: list[Any] = []
    for c in columns:
        shape = getattr(c, "shape", 0)
        spec.append((c.name, c.dtype, (shape,)) if shape else (c.name, c.dtype))
    return np.dtype(spec)


REQUEST_DTYPE = _dtype(REQUEST)
DECISION_DTYPE = _dtype(DECISION)
# Names the decision record's layout (and how fingerprints are computed): the idempotency
# store keeps records under it, so a changed layout never reads a record of another.
_FINGERPRINT_VERSION = 2
RECORD_SCHEMA = hashlib.sha1(f"{DECISION_DTYPE.descr}|{_FINGERPRINT_VERSION}".encode()).hexdigest()[:12]
_FINGERPRINTED = tuple(c.name for c in REQUEST if c.fingerprint)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _word_index() -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Where each byte of the fingerprinted words sits in a request record, and which
    bytes are padding (each column's bytes zero-padded to whole 64-bit words)."""
    idx: list[int] = []
    pad: list[bool] = []
    for name in _FINGERPRINTED:
        offset, width = REQUEST_DTYPE.fields[name][1], REQUEST_DTYPE[name].itemsize  # type: ignore[index]
        padded = -(-width // 8) * 8
        idx += [offset + k if k < width else 0 for k in range(padded)]
        pad += [k >= width for k in range(padded)]
    return np.array(idx, np.intp), np.array(pad, bool)


_WORD_BYTES, _WORD_PAD = _word_index()
_SMALL = 8  # rows up to which the mixing runs on Python ints: ~3 us a row against ~60 us of numpy calls
_MASK = (1 << 64) - 1


def fingerprints(rows: Rows) -> npt.NDArray[np.uint64]:
    """A stable 64-bit digest per request of what was asked (not when, not under which id).

    Each fingerprinted column's bytes are read as little-endian 64-bit words (zero-padded)
    and mixed in, in declaration order. The words are gathered from the records in one
    indexing step; the mixing is vectorized over the batch, or on Python ints for a few
    rows (the same arithmetic modulo 2**64: a single request pays microseconds, not the
    fixed cost of ~50 numpy calls).
    """
    n = rows.shape[0]
    if not n:
        return np.zeros(0, dtype=np.uint64)
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(n, REQUEST_DTYPE.itemsize).take(_WORD_BYTES, axis=1)
    raw[:, _WORD_PAD] = 0
    words = raw.view("<u8")
    if n <= _SMALL:
        return _mix_few(words.tolist())
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for word in words.T:
            h = (h ^ word) * _MIX
            h ^= h >> np.uint64(29)
    return h


def _mix_few(words: list[list[int]]) -> npt.NDArray[np.uint64]:
    mix = int(_MIX)
    out = []
    for row in words:
        x = 0
        for w in row:
            x = ((x ^ w) * mix) & _MASK
            x ^= x >> 29
        out.append(x)
    return np.array(out, dtype=np.uint64)


@dataclass(frozen=True)
class RequestBatch:
    """Validated requests, one ``REQUEST_DTYPE`` record each, plus the sampled traces inside."""

    rows: Rows
    trace: str = ""  # "\n"-joined W3C traceparents of the sampled requests inside

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, column: str) -> npt.NDArray[Any]:
        return self.rows[column]

    @property
    def deadline(self) -> npt.NDArray[np.float64]:
        return self.rows["deadline"]

    def merchant_ids(self) -> list[str]:
        ids: list[str] = self.rows["merchant_id"].astype(f"U{MAX_ID}").tolist()  # ASCII by validation
        return ids

    def application_ids(self) -> list[str]:
        ids: list[str] = self.rows["application_id"].astype(f"U{MAX_ID}").tolist()
        return ids

    def idempotency_keys(self) -> list[str]:
        """``caller|application_id``: one caller's ids never collide with another's."""
        keys: list[str] = np.char.add(
            np.char.add(self.rows["caller"], b"|"), self.rows["application_id"]
        ).astype(f"U{2 * MAX_ID + 1}").tolist()
        return keys

    @staticmethod
    def of_records(records: Sequence[bytes], trace: str = "") -> RequestBatch:
        """A batch of ``bytes`` records (as the codec decodes unary requests)."""
        return RequestBatch(np.frombuffer(b"".join(records), dtype=REQUEST_DTYPE), trace)

    @staticmethod
    def concat(batches: Sequence[RequestBatch]) -> RequestBatch:
        if len(batches) == 1:
            return batches[0]
        return RequestBatch(
            np.concatenate([b.rows for b in batches]) if batches else np.zeros(0, REQUEST_DTYPE),
            "\n".join(b.trace for b in batches if b.trace),
        )


def blank_decisions(n: int) -> Rows:
    """``n`` decision records with no decision in them yet (no grade, no reasons)."""
    rows = np.zeros(n, dtype=DECISION_DTYPE)
    rows["reason"] = -1
    return rows


@dataclass(frozen=True)
class DecisionBatch:
    """A replica's answer: one ``DECISION_DTYPE`` record per request, in request order.

    ``reason`` columns index ``reason_table`` (``(code, description)``); ``message`` says
    why the items with a non-zero ``status`` were not decided; ``stage_s`` holds the
    replica's seconds per pipeline stage for this batch (recorded by the front end).
    """

    rows: Rows
    reason_table: tuple[tuple[str, str], ...] = ()
    message: str = ""
    stage_s: Mapping[str, float] = field(default_factory=dict)
    # Per shadow bundle: [scored, approved, sum of PD, sum of limits] (services.scoring.variants).
    shadow_stats: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, column: str) -> npt.NDArray[Any]:
        return self.rows[column]

    @property
    def status(self) -> npt.NDArray[np.int8]:
        return self.rows["status"]

    def decision_ids(self) -> list[str]:
        return [d.decode() for d in self.rows["decision_id"].tolist()]

    def reason_codes(self, i: int) -> list[str]:
        """The reason codes of row ``i``, most adverse first (for tests and tools)."""
        return [self.reason_table[r][0] for r in self.rows["reason"][i].tolist() if r >= 0]

    def slice(self, start: int, stop: int) -> DecisionBatch:
        return DecisionBatch(self.rows[start:stop], self.reason_table, self.message, self.stage_s, self.shadow_stats)


assert DECISION_DTYPE["reason"].shape == (MAX_REASONS,)
