"""The log's record: what one logged item holds, and how batches become one Arrow table.

The hot path hands over an ``Entry`` per batch (its numpy arrays, nothing per row); the
writer thread joins the entries of a flush and turns them into one Arrow table here,
column by column (the cost per column is paid once per flush, not per batch). One row
per item, answered or refused, in request order:

- who and when: ``replica_id``, ``logged_at`` (UTC), ``batch_seq``, ``row``;
- the request: ``application_key`` and ``merchant_key`` (keyed hashes, 16 bytes, never
  the ids), ``caller``, amount, currency code, term, product, channel, declared revenue,
  deadline;
- the decision: status, decision id, decision, limit and its currency, APR, grade, PD,
  reason codes and contributions (most adverse first), model and policy versions,
  feature age, stale, degraded, the request's fingerprint;
- ``replay``: answered from the idempotency store or from an earlier item of the same
  batch: the decision was logged when it was made; this row is not a second decision;
- the inputs of a decision made here: every feature value (``f_<column>``), the oldest
  feature's event time, each view's event time (``view_ts_<view>``) and the tag bitset as
  64-bit words; null on rows not decided here (refused, replays);
- the variant: ``bundle_id`` and ``variant`` (``champion`` or the challenger's name) of the
  bundle that answered, and ``shadows``, per row decided here, what each shadow bundle
  would have answered (variant, bundle, PD, decision, limit, grade);
- ``stage_<name>_s``: the batch's seconds per pipeline stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from features import MATRIX_COLUMNS
from features.batch import VIEW_NAMES
from services.decisionlog.privacy import IdHasher
from services.schema.currency import CURRENCIES
from services.schema.records import Rows
from services.scoring.stages import STAGES
from services.scoring.variants import ShadowLog

LAYOUT_VERSION = "1"
FEATURE_PREFIX = "f_"
_CURRENCY = pa.array([c.code for c in CURRENCIES] + [""])  # index -1 (len): ""


@dataclass(frozen=True)
class Entry:
    """One scored batch as the engine hands it over (arrays it no longer writes)."""

    requests: Rows
    decisions: Rows
    replay: npt.NDArray[np.bool_]
    fresh: npt.NDArray[np.intp]  # rows decided here: the feature arrays' rows, in order
    matrix: npt.NDArray[np.float32]
    event_ts: npt.NDArray[np.int64]
    view_ts: npt.NDArray[np.int64] | None
    tag_words: npt.NDArray[np.uint64]
    reason_table: tuple[tuple[str, str], ...]
    stage_s: Mapping[str, float] = field(default_factory=dict)
    logged_at: float = 0.0
    shadows: ShadowLog | None = None  # the shadows' answers for the ``fresh`` rows


    def __len__(self) -> int:
        return int(self.requests.shape[0])


def _text(column: npt.NDArray[np.bytes_]) -> pa.Array:
    return pc.cast(pa.array(column), pa.string())  # numpy 'S' -> binary (NULs stripped) -> utf8


def _per_batch(entries: Sequence[Entry], values: Sequence[float | int], dtype: str) -> npt.NDArray[np.generic]:
    return np.repeat(np.asarray(values, dtype=dtype), [len(e) for e in entries])


def _code(index: npt.NDArray[np.integer]) -> pa.Array:
    """Currency indices -> ISO codes (an unknown index reads "")."""
    i = index.astype(np.int64)
    return pc.take(_CURRENCY, pa.array(np.where(i < 0, len(_CURRENCY) - 1, i)))


def _lists(values: pa.Array | npt.NDArray[np.generic], counts: npt.NDArray[np.integer]) -> pa.Array:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


class _Joined:
    """The entries of one flush, joined into whole-flush arrays."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = entries
        self.n = sum(len(e) for e in entries)
        self.requests = np.concatenate([e.requests for e in entries])
        self.decisions = np.concatenate([e.decisions for e in entries])
        starts = np.cumsum([0] + [len(e) for e in entries[:-1]])
        self.fresh = np.concatenate([e.fresh + s for e, s in zip(entries, starts, strict=True)])
        self.all_fresh = len(self.fresh) == self.n
        valid = np.zeros(self.n, dtype=bool)
        valid[self.fresh] = True
        # One validity bitmap for every input column of the flush (built once, shared).
        self._valid = None if self.all_fresh else pa.array(valid).buffers()[1]
        self._nulls = self.n - len(self.fresh)

    def scatter(self, values: npt.NDArray[np.generic], dtype: pa.DataType) -> pa.Array:
        """Rows decided here take ``values`` (in order); the others are null."""
        if self.all_fresh:
            full = np.ascontiguousarray(values)
        else:
            full = np.zeros(self.n, dtype=values.dtype)
            full[self.fresh] = values
        return pa.Array.from_buffers(dtype, self.n, [self._valid, pa.py_buffer(full)], self._nulls)


def _reasons(j: _Joined) -> dict[str, pa.Array]:
    """Reason indices of each batch's table -> codes of one table for the flush."""
    codes: dict[str, int] = {}
    parts = []
    for e in j.entries:
        remap = np.array([codes.setdefault(c, len(codes)) for c, _ in e.reason_table] + [-1], dtype=np.int32)
        r = e.decisions["reason"].astype(np.intp)
        parts.append(remap[np.where((r >= 0) & (r < len(e.reason_table)), r, -1)])
    idx = np.concatenate(parts)
    keep = idx >= 0
    table = pa.array(list(codes), pa.string())
    return {
        "reasons": _lists(pc.take(table, pa.array(idx[keep])), keep.sum(axis=1)),
        "reason_contrib": _lists(pa.array(j.decisions["reason_contrib"][keep]), keep.sum(axis=1)),
    }


def _request_columns(j: _Joined, ids: IdHasher) -> dict[str, pa.Array]:
    r = j.requests
    return {
        "application_key": ids.column(r["application_id"]),
        "merchant_key": ids.column(r["merchant_id"], cache=True),
        "caller": _text(r["caller"]),
        "amount_minor": pa.array(r["amount_minor"]),
        "currency": _code(r["currency"]),
        "term_months": pa.array(r["term_months"]),
        "product": pa.array(r["product"]),
        "channel": pa.array(r["channel"]),
        "declared_revenue_minor": pa.array(r["declared_revenue_minor"], from_pandas=True),
        "deadline": pa.array((r["deadline"] * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC")),
    }


def _decision_columns(j: _Joined) -> dict[str, pa.Array]:
    d = j.decisions
    return {
        "status": pa.array(d["status"]),
        "replay": pa.array(np.concatenate([e.replay for e in j.entries])),
        "decision_id": _text(d["decision_id"]),
        "decision": pa.array(d["decision"]),
        "approved_minor": pa.array(d["approved_minor"]),
        "limit_currency": _code(d["currency"]),
        "apr_bps": pa.array(d["apr_bps"]),
        "risk_grade": _text(d["risk_grade"]),
        "pd": pa.array(d["pd"]),
        **_reasons(j),
        "model_version": _text(d["model_version"]),
        "policy_version": _text(d["policy_version"]),
        "bundle_id": _text(d["bundle_id"]),
        "variant": _text(d["variant"]),
        "feature_age_s": pa.array(d["feature_age_s"], from_pandas=True),
        "stale": pa.array(d["stale"]),
        "degraded": pa.array(d["degraded"]),
        "fingerprint": pa.array(d["fingerprint"]),
    }


SHADOW_TYPE = pa.struct([("variant", pa.string()), ("bundle_id", pa.string()), ("pd", pa.float64()),
                         ("decision", pa.int8()), ("approved_minor", pa.int64()), ("risk_grade", pa.string())])


def _shadow_column(j: _Joined) -> pa.Array:
    """Per row, what each shadow bundle would have answered (empty where none ran)."""
    counts = np.zeros(j.n, dtype=np.int64)
    parts: list[dict[str, pa.Array]] = []
    start = 0
    for e in j.entries:
        sh = e.shadows
        if sh is not None and len(e.fresh):
            counts[start + e.fresh] = len(sh.names)
            flat = sh.scores.reshape(-1)  # row-major: a row's shadows side by side
            k = len(e.fresh)
            parts.append({
                "variant": pa.array(list(sh.names) * k, pa.string()),
                "bundle_id": pa.array(list(sh.bundles) * k, pa.string()),
                "pd": pa.array(flat["pd"], from_pandas=True), "decision": pa.array(flat["decision"]),
                "approved_minor": pa.array(flat["approved_minor"]), "risk_grade": _text(flat["risk_grade"]),
            })
        start += len(e)
    if not parts:
        values = pa.array([], SHADOW_TYPE)
    else:
        values = pa.StructArray.from_arrays(
            [pa.concat_arrays([p[f.name] for p in parts]).cast(f.type) for f in SHADOW_TYPE], fields=list(SHADOW_TYPE))
    return _lists(values, counts)


def _feature_columns(j: _Joined) -> dict[str, pa.Array]:
    entries = j.entries
    ncols = len(MATRIX_COLUMNS)
    # Transposed once, so each feature column is one contiguous run.
    by_column = np.concatenate([e.matrix.reshape(len(e.fresh), ncols) for e in entries]).T.copy()
    cols = {f"{FEATURE_PREFIX}{name}": j.scatter(by_column[k], pa.float32()) for k, name in enumerate(MATRIX_COLUMNS)}
    cols["feature_event_ts"] = j.scatter(np.concatenate([e.event_ts for e in entries]), pa.int64())
    views = np.concatenate([
        e.view_ts if e.view_ts is not None else np.zeros((len(e.fresh), len(VIEW_NAMES)), np.int64) for e in entries
    ])
    for k, view in enumerate(VIEW_NAMES):
        cols[f"view_ts_{view}"] = j.scatter(views[:, k], pa.int64())
    width = max(e.tag_words.shape[1] if e.tag_words.ndim == 2 else 0 for e in entries)
    words = np.zeros((j.n, width), dtype=np.uint64)
    for e, s in zip(entries, np.cumsum([0] + [len(e) for e in entries[:-1]]), strict=True):
        if len(e.fresh):
            words[e.fresh + s, : e.tag_words.shape[1]] = e.tag_words
    cols["tag_words"] = _lists(pa.array(words.ravel()), np.full(j.n, width))
    return cols


def to_table(entries: Sequence[Entry], ids: IdHasher, replica_id: str, first_seq: int) -> pa.Table:
    """The entries of one flush (batch numbers from ``first_seq``) as one table."""
    j = _Joined(entries)
    cols: dict[str, pa.Array] = {
        "replica_id": pa.repeat(pa.scalar(replica_id, pa.string()), j.n),
        "logged_at": pa.array(
            (_per_batch(entries, [e.logged_at for e in entries], "f8").astype(np.float64) * 1e6).astype(np.int64),
            pa.timestamp("us", tz="UTC"),
        ),
        "batch_seq": pa.array(_per_batch(entries, range(first_seq, first_seq + len(entries)), "i8")),
        "row": pa.array(np.concatenate([np.arange(len(e), dtype=np.int32) for e in entries])),
        **_request_columns(j, ids),
        **_decision_columns(j),
        **_feature_columns(j),
        "shadows": _shadow_column(j),
    }
    for stage in STAGES:
        cols[f"stage_{stage}_s"] = pa.array(_per_batch(entries, [e.stage_s.get(stage, 0.0) for e in entries], "f8"))
    meta = {"creditauth.decision_log": LAYOUT_VERSION}
    return pa.table(cols).replace_schema_metadata(meta)
