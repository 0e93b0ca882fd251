"""The replica's own check of every request record, derived from the declaration (``columns``).

The front end validates requests as it decodes them; a replica checks again because a
batch can reach it by other paths (a peer on the direct channel, a Serve handle call)
and the engine indexes tables with these values (currency, product). The check is one
pass of numpy comparisons per column over the whole batch, so its cost is per batch,
not per row in Python; only the rows found bad are described one by one.

    require_rows(rows)      the whole batch's layout: a 1-d array of REQUEST_DTYPE, or InvalidRequest
    check(rows)             which rows break which rule: a mask and (field, message) per bad row
    screen(batch, score)    score the good rows, answer INVALID_ARGUMENT for the bad ones
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from services.errors import InvalidRequest
from services.schema.codes import Code
from services.schema.columns import ID_CHARS, MAX_ID, REQUEST, REQUEST_MESSAGE, In
from services.schema.currency import CURRENCIES
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch, Rows, blank_decisions

Mask = npt.NDArray[np.bool_]
# (mask of the rows that break a rule, the message for row i)
Finding = tuple[Mask, Callable[[int], str]]
MAX_DESCRIBED = 3  # bad rows named in a batch's message; the count says how many more

_ID_BYTES = np.array([bool(re.fullmatch(f"[{ID_CHARS}]", chr(b))) for b in range(256)])
_ID_BYTES[0] = True  # the padding after the id (checked apart: only at the end)
# Set by the front end from the authenticated identity (services.auth names): any printable
# ASCII but blanks; empty where callers are anonymous.
_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[0x21:0x7F] = True
_PRINTABLE[0] = True
_NUL = b"\0"
_ID_MESSAGE = f"must be 1-{MAX_ID} characters of [{ID_CHARS}]"


@dataclass(frozen=True)
class Report:
    """What ``check`` found: ``bad[i]`` for a refused row, ``problems[i]`` its first (field, message)."""

    bad: Mask
    problems: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def require_rows(rows: object) -> Rows:
    """``rows`` if it is a 1-d array of request records; ``InvalidRequest`` naming what is wrong."""
    if not isinstance(rows, np.ndarray):
        raise InvalidRequest("rows", f"must be an array of request records, got {type(rows).__name__}")
    if rows.dtype != REQUEST_DTYPE:
        raise InvalidRequest("rows", f"must be request records {REQUEST_DTYPE.descr}, got {rows.dtype.descr}")
    if rows.ndim != 1:
        raise InvalidRequest("rows", f"must be 1-dimensional, got shape {rows.shape}")
    return rows


def check(rows: Rows) -> Report:
    """Every rule of the declaration over the batch at once; the bad rows and why."""
    bad = np.zeros(rows.shape[0], dtype=bool)
    findings: list[tuple[str, Finding]] = []
    for name, field_path, rule in _RULES:
        found = rule(rows[name])
        if found is not None:
            bad |= found[0]
            findings.append((field_path, found))
    problems: dict[int, tuple[str, str]] = {}
    for where, (mask, say) in findings:  # declaration order: a row's first broken column wins
        for i in np.flatnonzero(mask).tolist():
            problems.setdefault(i, (where, say(i)))
    return Report(bad, problems)


# A rule takes its column and answers None when every row passes (the common case, kept
# to whole-column operations) or the mask of failing rows and how to word each failure.
Rule = Callable[[npt.NDArray[Any]], "Finding | None"]


def _rule(c: In, dtype: np.dtype[Any]) -> Rule | None:
    if c.rule == "id":
        return _ids(_ID_BYTES, 1, _ID_MESSAGE)
    if c.rule == "range":
        return _range(c, dtype.kind == "f" and _optional(c))
    if c.rule == "enum":
        leaf = (c.proto or c.name).rsplit(".", 1)[-1]
        return _span(*_enum_span(c), lambda v: f"must be a known {leaf}, got {v}")
    if c.rule == "currency":
        top = len(CURRENCIES) - 1
        return _span(0, top, lambda v: f"must be a booked currency (index 0-{top}), got {v}")
    if dtype.kind == "S":  # set by the front end (the caller): empty or printable
        return _ids(_PRINTABLE, 0, f"must be empty or 1-{MAX_ID} printable characters")
    if dtype.kind == "f":  # the deadline: a time, never NaN or infinite
        return _finite
    return None


def _ids(allowed: npt.NDArray[np.bool_], shortest: int, message: str) -> Rule:
    keep = bytes(b for b in range(256) if allowed[b])

    def rule(col: npt.NDArray[Any]) -> Finding | None:
        raw = np.ascontiguousarray(col).view(np.uint8).reshape(col.shape[0], col.dtype.itemsize)
        present = raw != 0
        # A NUL before the last character cuts the id short (numpy strips only trailing NULs).
        inner_nul = np.greater(present[:, 1:], present[:, :-1])
        short = ~present[:, :shortest].all(axis=1)
        # The common case in as few whole-column operations as possible: nothing is left
        # once the allowed bytes are deleted, no inner NUL, none too short.
        if not raw.tobytes().translate(None, keep) and not inner_nul.any() and not short.any():
            return None
        mask = inner_nul.any(axis=1) | ~allowed[raw].all(axis=1) | short
        return mask, lambda i: f"{message}, got {bytes(raw[i]).rstrip(_NUL)!r}"

    return rule


def _range(c: In, optional: bool) -> Rule:
    def rule(col: npt.NDArray[Any]) -> Finding | None:
        # Written so NaN fails both comparisons: a missing required value is refused.
        low, high = ~(col >= c.lo), ~(col <= c.hi)
        if optional:
            present = ~np.isnan(col)
            low &= present
            high &= present
        mask = low | high
        if not mask.any():
            return None
        return mask, lambda i: (c.too_low if low[i] else c.too_high).format(v=col[i], lo=c.lo, hi=c.hi)

    return rule


def _span(lo: int, hi: int, say: Callable[[object], str]) -> Rule:
    def rule(col: npt.NDArray[Any]) -> Finding | None:
        mask = (col < lo) | (col > hi)
        return (mask, lambda i: say(col[i])) if mask.any() else None

    return rule


def _finite(col: npt.NDArray[Any]) -> Finding | None:
    mask = ~np.isfinite(col)
    return (mask, lambda i: f"must be a finite time, got {col[i]}") if mask.any() else None


def _descriptor(path: str) -> Any:
    """The proto field at ``path`` (``requested_amount.currency``) in the request message."""
    message, fd = REQUEST_MESSAGE, None
    for part in path.split("."):
        fd = message.fields_by_name[part]
        message = fd.message_type
    return fd


def _enum_span(c: In) -> tuple[int, int]:
    """The named non-zero values of the column's proto enum (1..n, as enums.py asserts)."""
    assert c.proto is not None, f"{c.name}: an enum column must come from the proto"
    values = sorted(v.number for v in _descriptor(c.proto).enum_type.values if v.number != 0)
    assert values == list(range(values[0], values[-1] + 1)), f"{c.name}: enum values must be contiguous"
    return values[0], values[-1]


def _optional(c: In) -> bool:
    """Whether the proto field may be absent (its column then holds NaN)."""
    return c.proto is not None and bool(_descriptor(c.proto).has_presence)


_RULES: tuple[tuple[str, str, Rule], ...] = tuple(
    (c.name, c.proto or c.name, rule)
    for c in REQUEST
    if (rule := _rule(c, REQUEST_DTYPE[c.name])) is not None
)


def describe(report: Report) -> str:
    """One line for a batch's message: the first few bad rows and how many more."""
    items = sorted(report.problems.items())
    said = "; ".join(f"item {i}: {f}: {m}" for i, (f, m) in items[:MAX_DESCRIBED])
    more = len(items) - MAX_DESCRIBED
    return f"{said}; and {more} more invalid items" if more > 0 else said


def screen(batch: RequestBatch, score: Callable[[RequestBatch], DecisionBatch]) -> DecisionBatch:
    """``score`` of the valid rows; INVALID_ARGUMENT (status column) for the others, in order.

    ``InvalidRequest`` for a batch whose records are not request records at all.
    """
    rows = require_rows(batch.rows)
    report = check(rows)
    if report.ok:
        return score(batch)
    good = ~report.bad
    out = blank_decisions(len(rows))
    out["status"][report.bad] = Code.INVALID_ARGUMENT
    out["application_id"] = rows["application_id"]
    message = describe(report)
    table: tuple[tuple[str, str], ...] = ()
    stages: dict[str, float] = {}
    shadows: Mapping[str, Sequence[float]] = {}
    if good.any():
        resp = score(RequestBatch(rows[good], batch.trace))
        out[good] = resp.rows
        table, stages, shadows = resp.reason_table, dict(resp.stage_s), resp.shadow_stats
        message = f"{resp.message}; {message}" if resp.message else message
    return DecisionBatch(out, table, message, stages, shadows)
