"""Replay: every logged fresh decision recomputed from its logged inputs.

A logged row decided here holds everything the decider was given: the request's fields,
the gathered feature matrix (velocity counts already in it), each view's event time (from
which ``found`` follows), the tag words, the degraded flag and the feature age. The decision
time ``now`` itself is not logged (``logged_at`` is when the batch was handed to the log,
after it was decided); the only thing the decider derives from ``now`` is the age,
``now - event_ts`` as float32, and that age is logged (``feature_age_s``). So the features
are handed over as ``LoggedFeatures``, whose ``age_s`` answers the logged ages: the same
``Decider`` then runs, unchanged, on any number of rows at once.

Replays of earlier decisions and refused items are not decisions made here: they are
counted and skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from features import MATRIX_COLUMNS
from features.batch import VIEW_NAMES
from features.catalog import BATCH_VIEWS
from services.decisionlog.inputs import FEATURES_MISSING, VELOCITY_MISSING, Inputs, LoggedFeatures
from services.decisionlog.makers import AS_LOGGED, Makers, Side
from services.decisionlog.reader import ROW_KEY, _frames
from services.decisionlog.schema import FEATURE_PREFIX
from services.errors import ConfigError
from services.schema.codes import Code
from services.schema.columns import MAX_REASONS
from services.schema.currency import CURRENCIES
from services.schema.records import REQUEST_DTYPE, Rows, blank_decisions

F64 = npt.NDArray[np.float64]
# The reasons the policy gives when an input is missing (services.policy.degraded): the log
# has one ``degraded`` flag, and these say which input it was.
_MISSING_REASONS = (("D_FEATURES_UNAVAILABLE", FEATURES_MISSING), ("D_VELOCITY_UNAVAILABLE", VELOCITY_MISSING))
PD_TOLERANCE = 1e-12
BATCH_ROWS = 65_536  # rows per decider call: large enough to amortise, small enough to stay in cache
_FEATURES = [f"{FEATURE_PREFIX}{c}" for c in MATRIX_COLUMNS]
_FOUND_VIEWS = [f"view_ts_{v.name}" for v in BATCH_VIEWS]  # as features.batch.assemble decides "found"
_CURRENCY = {c.code: i for i, c in enumerate(CURRENCIES)}


class LogError(ConfigError):
    """The log cannot be replayed as it is (a column missing or a value out of place)."""


def _column(df: pl.DataFrame, name: str) -> pl.Series:
    if name not in df.columns:
        raise LogError(f"decision log: column {name!r} is missing; this log cannot be replayed")
    return df[name]


def _requests(df: pl.DataFrame) -> Rows:
    r = np.zeros(df.height, REQUEST_DTYPE)
    for name in ("amount_minor", "term_months", "product", "channel"):
        r[name] = _column(df, name).to_numpy()
    r["declared_revenue_minor"] = _column(df, "declared_revenue_minor").cast(pl.Float64).fill_null(np.nan).to_numpy()
    cur = _column(df, "currency").replace_strict(_CURRENCY, default=-1, return_dtype=pl.Int8).to_numpy()
    if (cur < 0).any():
        bad = df["currency"][int(np.flatnonzero(cur < 0)[0])]
        raise LogError(f"decision log: field 'currency': {bad!r} is not a booked currency")
    r["currency"] = cur
    return r


def _tag_words(df: pl.DataFrame) -> npt.NDArray[np.uint64]:
    """The logged tag words as an ``(n, width)`` array; rows without tags (degraded) are zero."""
    words = _column(df, "tag_words")
    lengths = words.list.len().to_numpy()
    width = int(lengths.max()) if len(lengths) else 0
    out = np.zeros((df.height, width), np.uint64)
    full = lengths == width
    if width and full.any():
        out[full] = words.filter(pl.Series(full)).explode().to_numpy().astype(np.uint64).reshape(-1, width)
    odd = ~full & (lengths > 0)
    if odd.any():
        raise LogError(f"decision log: field 'tag_words': rows of {sorted(set(lengths[odd]))} words beside {width}")
    return out


def _added_since(df: pl.DataFrame) -> pl.DataFrame:
    """A log written before a feature or view was added to the catalogue replays without it
    (null: missing, as the replica that decided never read it), rather than not at all."""
    absent = [c for c in (*_FEATURES, *(f"view_ts_{v}" for v in VIEW_NAMES)) if c not in df.columns]
    if not absent or not any(c in df.columns for c in _FEATURES):
        return df  # nothing added, or not a decision log at all (the checks below say so)
    return df.with_columns(
        pl.lit(None, dtype=pl.Float32 if c.startswith(FEATURE_PREFIX) else pl.Int64).alias(c) for c in absent
    )


def inputs_of(df: pl.DataFrame, max_feature_age_s: float) -> Inputs:
    """The decider's inputs from logged rows that were decided here."""
    df = _added_since(df)
    for name in (*_FEATURES, *_FOUND_VIEWS, "feature_event_ts", "feature_age_s", "degraded"):
        _column(df, name)
    matrix = np.ascontiguousarray(df.select(_FEATURES).to_numpy().astype(np.float32, copy=False))
    view_ts = df.select(f"view_ts_{v}" for v in VIEW_NAMES).fill_null(0).to_numpy().astype(np.int64)
    words = _tag_words(df)
    feats = LoggedFeatures(
        matrix=matrix,
        tags=words.view(np.uint8).reshape(df.height, words.shape[1] * 8),
        found=np.asarray((df.select(_FOUND_VIEWS).fill_null(0).to_numpy() > 0).any(axis=1), dtype=bool),
        event_ts=df["feature_event_ts"].fill_null(0).to_numpy().astype(np.int64),
        view_ts=view_ts,
        max_age_s=max_feature_age_s,
        logged_age_s=df["feature_age_s"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
    )
    return Inputs(_requests(df), feats, _missing(df))


def _missing(df: pl.DataFrame) -> npt.NDArray[np.int8]:
    """Which input each degraded row went without, from the reason the policy logged for it;
    a degraded row naming neither was logged before velocity could be missing: its features were."""
    reasons = _column(df, "reasons")
    out = np.zeros(df.height, np.int8)
    for code, bit in _MISSING_REASONS:
        out |= np.where(reasons.list.contains(code).fill_null(False).to_numpy(), bit, 0).astype(np.int8)
    degraded = df["degraded"].fill_null(False).to_numpy()
    out[degraded & (out == 0)] = FEATURES_MISSING
    out[~degraded] = 0
    return out


@dataclass
class Log:
    """A log read back: the rows decided here (their inputs logged), and how many were not."""

    decided: pl.DataFrame
    replays: int  # answered from an earlier decision
    refused: int  # refused before a decision (deadline, reused id, log full)
    without_inputs: int  # answered, not flagged a replay, yet no inputs logged (not expected)


def scan_log(root: Path) -> pl.DataFrame | None:
    """Every logged row, one copy each, in file order. As ``reader.scan``, but a row seen
    twice (a segment rolling) is dropped by a mask over the key columns: ``unique`` on the
    whole frame costs 12x more at a million rows (18 s against 1.5 s here)."""
    for attempt in range(3):
        frames = _frames(root, journal=True)
        if not frames:
            return None
        try:
            df = pl.concat(frames, how="diagonal_relaxed").collect()
            first = df.select(pl.struct(*ROW_KEY).is_first_distinct()).to_series()
            return df if first.all() else df.filter(first)
        except (FileNotFoundError, pl.exceptions.ComputeError):  # a chunk rolled away meanwhile
            if attempt == 2:
                raise
    return None


def read_log(root: Path) -> Log:
    df = scan_log(root)
    if df is None or df.height == 0:
        raise LogError(f"{root}: no decision logged there (expected date=*/hour=*/*.parquet)")
    for name in ("status", "replay", "decision_id", "model_version", "policy_version", "feature_event_ts"):
        _column(df, name)
    # Decided here: its inputs are logged (an item the policy refused, UNAVAILABLE, too).
    inputs = df["feature_event_ts"].is_not_null()
    replay = df["replay"].fill_null(False) & ~inputs
    refused = (df["status"] != Code.OK) & ~inputs
    decided = df.filter(inputs)
    rest = df.height - decided.height - int(replay.sum()) - int(refused.sum())
    return Log(decided, int(replay.sum()), int(refused.sum()), rest)


def batches(df: pl.DataFrame, rows: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
    for start in range(0, df.height, rows):
        yield df.slice(start, rows)


class Vocab:
    """Strings (reason codes, grades) as small integers shared by every side compared."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self._ids: dict[str, int] = {}

    def id(self, word: str) -> int:
        if word not in self._ids:
            self._ids[word] = len(self.words)
            self.words.append(word)
        return self._ids[word]

    def ids(self, words: pl.Series) -> npt.NDArray[np.int32]:
        """A string column as ids (null: -1)."""
        mapping = {w: self.id(w) for w in words.drop_nulls().unique().to_list()}
        return words.replace_strict(mapping, default=-1, return_dtype=pl.Int32).fill_null(-1).to_numpy()


@dataclass(frozen=True)
class Outcome:
    """Decisions in comparable form: reasons and grades as ``Vocab`` ids, reasons in order."""

    status: npt.NDArray[np.int8]
    decision: npt.NDArray[np.int8]
    approved_minor: npt.NDArray[np.int64]
    apr_bps: npt.NDArray[np.int32]
    grade: npt.NDArray[np.int32]
    pd: F64
    reasons: npt.NDArray[np.int32]  # (n, MAX_REASONS), -1 after the last

    @staticmethod
    def concat(parts: list[Outcome]) -> Outcome:
        if not parts:
            return outcome_of(blank_decisions(0), (), Vocab(), Vocab())
        return Outcome(*(np.concatenate([getattr(p, f) for p in parts]) for f in Outcome.__dataclass_fields__))


def outcome_of(rows: Rows, reason_table: tuple[tuple[str, str], ...], reasons: Vocab, grades: Vocab) -> Outcome:
    """Decision records -> an outcome (reason indices of ``reason_table`` packed to the front)."""
    remap = np.array([reasons.id(c) for c, _ in reason_table] + [-1], dtype=np.int32)
    r = rows["reason"].astype(np.intp)
    r = np.take_along_axis(r, np.argsort(r < 0, axis=1, kind="stable"), axis=1)  # the log drops the gaps
    letters, inverse = np.unique(rows["risk_grade"], return_inverse=True)
    gid = np.array([grades.id(g.decode()) for g in letters.tolist()], dtype=np.int32)
    return Outcome(rows["status"].copy(), rows["decision"].copy(), rows["approved_minor"].copy(),
                   rows["apr_bps"].copy(), gid[inverse.ravel()], rows["pd"].copy(), remap[r])


def logged_outcome(df: pl.DataFrame, reasons: Vocab, grades: Vocab) -> Outcome:
    """The decisions as logged."""
    lists = _column(df, "reasons").to_arrow()
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy()
    if len(lengths) and lengths.max() > MAX_REASONS:
        raise LogError(f"decision log: field 'reasons': a row holds {lengths.max()} codes, over {MAX_REASONS}")
    flat = reasons.ids(pl.Series(lists.flatten()))  # one pass over every code, not one per slot
    rows = np.repeat(np.arange(df.height), lengths)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    packed = np.full((df.height, MAX_REASONS), -1, dtype=np.int32)
    packed[rows, slot] = flat
    return Outcome(
        df["status"].to_numpy().astype(np.int8), df["decision"].to_numpy().astype(np.int8),
        df["approved_minor"].to_numpy().astype(np.int64),
        df["apr_bps"].to_numpy().astype(np.int32), grades.ids(df["risk_grade"]),
        df["pd"].cast(pl.Float64).fill_null(np.nan).to_numpy(), packed,
    )


FIELDS = ("status", "decision", "approved_minor", "apr_bps", "grade", "reasons", "pd")


def differs(a: Outcome, b: Outcome) -> dict[str, npt.NDArray[np.bool_]]:
    """Per compared field, the rows where ``a`` and ``b`` disagree (PD: beyond ``PD_TOLERANCE``)."""
    both_nan = np.isnan(a.pd) & np.isnan(b.pd)
    with np.errstate(invalid="ignore"):
        pd_ok = both_nan | (np.abs(a.pd - b.pd) <= PD_TOLERANCE)
    return {
        "status": a.status != b.status,
        "decision": a.decision != b.decision,
        "approved_minor": a.approved_minor != b.approved_minor,
        "apr_bps": a.apr_bps != b.apr_bps,
        "grade": a.grade != b.grade,
        "reasons": (a.reasons != b.reasons).any(axis=1),
        "pd": ~pd_ok,
    }


Progress = Callable[[int], object]  # told how many rows are done (a tqdm bar's update)


@dataclass
class Recomputed:
    """The logged outcome of every decided row and, per side, the recomputed one, in log order."""

    log: Log
    logged: Outcome
    outcomes: list[Outcome]
    makers: list[list[str]]  # per side, the makers used
    exact: list[bool]  # per side: every row recomputed with the versions that made it
    reasons: Vocab
    grades: Vocab

    @property
    def replayed(self) -> Outcome:
        return self.outcomes[0]


def recompute(
    log: Log, makers: Makers, sides: Sequence[Side] = (AS_LOGGED,), progress: Progress | None = None
) -> Recomputed:
    """Every decided row of ``log`` decided again by each side, batch by batch."""
    rec = Recomputed(log, Outcome.concat([]), [], [[] for _ in sides], [True] * len(sides), Vocab(), Vocab())
    logged: list[Outcome] = []
    outs: list[list[Outcome]] = [[] for _ in sides]
    for part in batches(log.decided):
        x = inputs_of(part, makers.max_feature_age_s)
        groups = list(_groups(part))
        for s, side in enumerate(sides):
            outs[s].append(_decide_side(rec, s, side, makers=makers, x=x, groups=groups))
        logged.append(logged_outcome(part, rec.reasons, rec.grades))
        if progress is not None:
            progress(part.height)
    rec.logged = Outcome.concat(logged)
    rec.outcomes = [Outcome.concat(o) for o in outs]
    return rec


def _decide_side(
    rec: Recomputed, s: int, side: Side, *, makers: Makers, x: Inputs,
    groups: list[tuple[tuple[str, str, str], npt.NDArray[np.intp]]],
) -> Outcome:
    parts = []
    for (mv, pv, bid), idx in groups:
        maker = makers.for_side(side, mv, pv, bid)
        rec.exact[s] &= maker.model_version == mv and maker.policy.version == pv and (
            not bid or not maker.bundle_id or maker.bundle_id == bid)
        if maker.name not in rec.makers[s]:
            rec.makers[s].append(maker.name)
        rows = maker.decide(x if len(idx) == len(x) else x.take(idx))
        # Reasons index each maker's own table: resolved to codes per group.
        parts.append((idx, outcome_of(rows, maker.policy.reason_table, rec.reasons, rec.grades)))
    return _scatter(parts)


def _groups(part: pl.DataFrame) -> Iterator[tuple[tuple[str, str, str], npt.NDArray[np.intp]]]:
    """Row indices by (model, policy, bundle) that made them (a few groups per batch: one per
    variant). A log from before bundles has no ``bundle_id``: its rows group by versions."""
    keys = ["model_version", "policy_version"] + (["bundle_id"] if "bundle_id" in part.columns else [])
    indexed = part.select(keys).with_row_index("i").group_by(*keys, maintain_order=True)
    for row in indexed.agg(pl.col("i")).iter_rows():
        mv, pv, bid = (row[0], row[1], row[2]) if len(keys) == 3 else (row[0], row[1], "")
        yield (str(mv), str(pv), str(bid or "")), np.asarray(row[-1], dtype=np.intp)


def _scatter(groups: list[tuple[npt.NDArray[np.intp], Outcome]]) -> Outcome:
    """The groups' outcomes back in row order."""
    if len(groups) == 1:
        return groups[0][1]
    whole = Outcome.concat([o for _, o in groups])
    order = np.argsort(np.concatenate([i for i, _ in groups]), kind="stable")
    return Outcome(*(getattr(whole, f)[order] for f in Outcome.__dataclass_fields__))

