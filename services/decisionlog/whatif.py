"""What-if: a candidate model and policy against the champion, on logged decisions or a population.

Both sides decide the same inputs (``replay.Inputs``): the logged ones (``--log``), or a
population's applications joined with its offline tables as of the snapshot
(``--population``). The champion on a log defaults to the decisions as logged (replay
shows they are what the logged versions decide). Figures, per side:

- approval rate: approved decisions / decisions;
- average limit: the mean approved limit of approved decisions;
- expected loss: the sum over approved decisions of PD x limit x LGD;

limits in the base currency's major units (at the candidate policy's exchange rates, one
yardstick for both sides). The changes: decisions by transition, limit deltas, reasons
that appeared or disappeared, and every figure by segment (industry, region, the
champion's grade, product, channel).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from features import MATRIX_COLUMNS, FeatureSettings, TagCatalog
from features.batch import VIEW_NAMES
from features.catalog import BATCH_VIEWS
from features.population import world
from features.population.generate import raw_dir
from services.decisionlog.inputs import Inputs, LoggedFeatures
from services.decisionlog.makers import Maker, Makers, Side
from services.decisionlog.reader import scan
from services.decisionlog.replay import (
    BATCH_ROWS,
    FIELDS,
    Outcome,
    Progress,
    Recomputed,
    Vocab,
    differs,
    outcome_of,
    read_log,
    recompute,
)
from services.errors import ConfigError
from services.policy import load_policy
from services.policy.decide import FxTable
from services.schema.currency import CURRENCIES
from services.schema.enums import APPROVE, CHANNELS, DECLINE, PRODUCTS, REVIEW
from services.schema.records import REQUEST_DTYPE

DECISIONS = {0: "UNSPECIFIED", APPROVE: "APPROVE", DECLINE: "DECLINE", REVIEW: "REVIEW"}
SEGMENTS = ("industry", "region", "grade", "product", "channel")
_INDUSTRY = MATRIX_COLUMNS.index("industry_code")
_REGION = MATRIX_COLUMNS.index("region_code")
_EXAMPLES = 10


@dataclass
class Compared:
    """Two sides' outcomes on the same rows, with what each row is (its segments)."""

    champion: str
    candidate: str
    a: Outcome
    b: Outcome
    segments: pl.DataFrame  # industry, region, product, channel
    currency: npt.NDArray[np.int8]
    decision_ids: pl.Series | None
    reasons: Vocab
    grades: Vocab


def _names(codes: npt.NDArray[np.floating[Any]] | npt.NDArray[np.integer[Any]], names: list[str],
           base: int = 0) -> pl.Series:
    """Codes -> names (``base``: the first code's value); missing or unknown codes read "unknown"."""
    c = np.asarray(codes, dtype=np.float64) - base
    ok = ~np.isnan(c) & (c >= 0) & (c < len(names))
    idx = pl.Series(np.where(ok, np.nan_to_num(c), len(names)).astype(np.int32))
    return idx.replace_strict(dict(enumerate([*names, "unknown"])), return_dtype=pl.String)


def segments_of(industry: npt.NDArray[np.float32], region: npt.NDArray[np.float32],
                product: npt.NDArray[np.int8], channel: npt.NDArray[np.int8]) -> pl.DataFrame:
    # Industry and region are the profile's codes; their names are the population's.
    return pl.DataFrame({
        "industry": _names(industry, [i.name for i in world.INDUSTRIES]),
        "region": _names(region, list(world.REGIONS)),
        "product": _names(product, list(PRODUCTS), base=1),
        "channel": _names(channel, list(CHANNELS), base=1),
    })


def compare_log(root: Path, makers: Makers, candidate: Side, champion: Side | None = None,
                progress: Progress | None = None) -> Compared:
    """The candidate (and a champion, else the decisions as logged) on every logged decision."""
    log = read_log(root)
    sides = [candidate] if champion is None else [candidate, champion]
    return compared(recompute(log, makers, sides, progress))


def compared(rec: Recomputed) -> Compared:
    """A recomputed log as a comparison: side 0 the candidate, side 1 (else the log) the champion."""
    d = rec.log.decided
    if len(rec.outcomes) < 2:
        versions = d.select("model_version", "policy_version").unique().sort("model_version", "policy_version")
        name = "as logged: " + "; ".join(f"model {m}, policy {p}" for m, p in versions.iter_rows())
        a = rec.logged
    else:
        name, a = ", ".join(rec.makers[1]), rec.outcomes[1]
    seg = segments_of(d[f"f_{MATRIX_COLUMNS[_INDUSTRY]}"].to_numpy(), d[f"f_{MATRIX_COLUMNS[_REGION]}"].to_numpy(),
                      d["product"].to_numpy(), d["channel"].to_numpy())
    currency = d["currency"].replace_strict({c.code: i for i, c in enumerate(CURRENCIES)}, default=0,
                                            return_dtype=pl.Int8).to_numpy()
    return Compared(name, ", ".join(rec.makers[0]), a, rec.outcomes[0], seg, currency, d["decision_id"],
                    rec.reasons, rec.grades)


# --- a population's applications ------------------------------------------------------


def _view(fs: FeatureSettings, name: str, columns: tuple[str, ...]) -> pl.DataFrame:
    path = fs.offline_dir / f"{name}.parquet"
    if not path.exists():
        raise ConfigError(f"--population: {path} is missing (run `creditauth data generate`)")
    ts = pl.col("event_timestamp").dt.epoch("s").alias(f"ts_{name}")
    return pl.read_parquet(path, columns=["merchant_id", "event_timestamp", *columns]).select(
        "merchant_id", ts, *columns)


def _tags(col: pl.Series, n_bytes: int) -> npt.NDArray[np.uint8]:
    """A Binary column of packed tags (null: none) as ``(n, n_bytes)``, without a Python loop."""
    filled = col.fill_null(b"")
    size = filled.bin.size().to_numpy()
    if ((size != n_bytes) & (size != 0)).any():
        raise ConfigError(f"--population: merchant_tags.tags: rows not {n_bytes} bytes")
    arr = pa.array(filled.to_arrow()).cast(pa.large_binary())
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    out = np.zeros((len(col), n_bytes), np.uint8)
    full = size == n_bytes
    out[full] = data[offsets[0] : offsets[-1]].reshape(-1, n_bytes)
    return out


def population_inputs(fs: FeatureSettings) -> Inputs:
    """Each application of the population with its merchant's features as of the snapshot."""
    parts = sorted((raw_dir(fs.data_dir) / "applications").glob("*.parquet"))
    if not parts:
        raise ConfigError(f"--population: no applications under {raw_dir(fs.data_dir)}/applications")
    frame = pl.read_parquet(parts).sort("application_id")
    matrix_views = {v.name: v.numeric_names for v in BATCH_VIEWS if v.numeric_names}
    for name in VIEW_NAMES:
        cols = matrix_views.get(name, ("tags",) if name == "merchant_tags" else ("apps_1h", "apps_24h"))
        frame = frame.join(_view(fs, name, cols), on="merchant_id", how="left")
    # The replica counts the application itself before deciding it (features.velocity).
    frame = frame.with_columns(pl.col("apps_1h", "apps_24h").fill_null(0) + 1)
    matrix = frame.select(pl.col(c).cast(pl.Float32) for c in MATRIX_COLUMNS).fill_null(np.nan).to_numpy()
    view_ts = frame.select(f"ts_{v}" for v in VIEW_NAMES).fill_null(0).to_numpy().astype(np.int64)
    present = np.where(view_ts > 0, view_ts, np.iinfo(np.int64).max)
    oldest = np.where(view_ts.max(axis=1) > 0, present.min(axis=1), 0)
    now = float(view_ts.max())  # the snapshot: features as fresh as when they were materialized
    feats = LoggedFeatures(
        matrix=np.ascontiguousarray(matrix, dtype=np.float32),
        tags=_tags(frame["tags"], TagCatalog.load(fs).n_bytes),
        found=np.asarray((view_ts[:, : len(BATCH_VIEWS)] > 0).any(axis=1), dtype=bool),
        event_ts=oldest, view_ts=view_ts, max_age_s=fs.max_feature_age_s,
        logged_age_s=np.where(oldest > 0, now - oldest.astype(np.float64), np.nan),
    )
    return Inputs(_requests(frame), feats, np.zeros(frame.height, dtype=np.int8))


def _requests(frame: pl.DataFrame) -> npt.NDArray[np.void]:
    r = np.zeros(frame.height, REQUEST_DTYPE)
    r["merchant_id"] = frame["merchant_id"].to_numpy().astype("S64")
    r["amount_minor"] = frame["amount_minor"].to_numpy()
    r["term_months"] = frame["term_months"].to_numpy()
    r["currency"] = frame["currency"].replace_strict({c.code: i for i, c in enumerate(CURRENCIES)},
                                                     return_dtype=pl.Int8).to_numpy()
    r["product"] = frame["product"].replace_strict({p: i + 1 for i, p in enumerate(PRODUCTS)},
                                                   return_dtype=pl.Int8).to_numpy()
    r["channel"] = frame["channel"].replace_strict({c: i + 1 for i, c in enumerate(CHANNELS)},
                                                   return_dtype=pl.Int8).to_numpy()
    r["declared_revenue_minor"] = frame["declared_monthly_revenue_minor"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return r


def decide_all(x: Inputs, maker: Maker, reasons: Vocab, grades: Vocab, progress: Progress | None = None) -> Outcome:
    parts = []
    for start in range(0, len(x), BATCH_ROWS):
        part = x.take(np.arange(start, min(start + BATCH_ROWS, len(x))))
        parts.append(outcome_of(maker.decide(part), maker.policy.reason_table, reasons, grades))
        if progress is not None:
            progress(len(part))
    return Outcome.concat(parts)


def compare_population(x: Inputs, makers: Makers, candidate: Side, champion: Side,
                       progress: Progress | None = None) -> Compared:
    """Champion and candidate on a population's inputs (``population_inputs``): each a
    bundle, or a model version (``latest`` when None) with a policy file."""
    reasons, grades = Vocab(), Vocab()
    sides = [makers.bundle(b) if b else makers.get(m or "latest", p) for m, p, b in (champion, candidate)]
    a, b = (decide_all(x, m, reasons, grades, progress) for m in sides)
    m = x.features.matrix
    seg = segments_of(m[:, _INDUSTRY], m[:, _REGION], x.requests["product"], x.requests["channel"])
    return Compared(sides[0].name, sides[1].name, a, b, seg, x.requests["currency"], None, reasons, grades)


# --- the figures --------------------------------------------------------------------


def frame_of(c: Compared, policy: Path | None) -> pl.DataFrame:
    """One row per decision: its segments, both sides' decision, limit (base major units) and PD."""
    fx = FxTable(load_policy(policy))
    base = {s: fx.to_base_minor(o.approved_minor, c.currency) / fx.base_scale for s, o in (("a", c.a), ("b", c.b))}
    changed = np.logical_or.reduce([v for k, v in differs(c.a, c.b).items() if k != "pd"])
    grade = pl.Series(c.a.grade).replace_strict(dict(enumerate(c.grades.words)), default="", return_dtype=pl.String)
    return c.segments.with_columns(
        grade=grade, decision_a=pl.Series(c.a.decision), decision_b=pl.Series(c.b.decision),
        limit_a=pl.Series(base["a"]), limit_b=pl.Series(base["b"]), pd_a=pl.Series(c.a.pd),
        pd_b=pl.Series(c.b.pd), changed=pl.Series(changed),
    )


def _figures(lgd: float) -> list[pl.Expr]:
    out = [pl.len().alias("n"), pl.col("changed").sum().alias("changed"),
           (pl.col("decision_a") != pl.col("decision_b")).sum().alias("decision_changed")]
    for side in ("a", "b"):
        approved = pl.col(f"decision_{side}") == APPROVE
        limit = pl.col(f"limit_{side}")
        out += [
            approved.mean().alias(f"approval_rate_{side}"),
            limit.filter(approved).mean().alias(f"mean_limit_{side}"),
            (pl.col(f"pd_{side}").fill_nan(0.0) * limit * lgd).filter(approved).sum().alias(f"expected_loss_{side}"),
        ]
    return out


def changes(c: Compared, frame: pl.DataFrame) -> dict[str, Any]:
    """What changed from side a to side b: transitions, limits, reasons."""
    trans = frame.group_by("decision_a", "decision_b").len().sort("decision_a", "decision_b")
    delta = (frame["limit_b"] - frame["limit_a"]).to_numpy()
    moved = delta[delta != 0]
    q = np.quantile(moved, [0.05, 0.5, 0.95]).tolist() if len(moved) else [0.0, 0.0, 0.0]
    counts, edges = np.histogram(moved, bins=24) if len(moved) else (np.zeros(0, int), np.zeros(1))
    out: dict[str, Any] = {
        "decisions": len(frame),
        "changed": int(frame["changed"].sum()),
        "transitions": [{"from": DECISIONS.get(f, str(f)), "to": DECISIONS.get(t, str(t)), "count": n}
                        for f, t, n in trans.iter_rows()],
        "limit_delta": {"raised": int((moved > 0).sum()), "cut": int((moved < 0).sum()),
                        "total": float(moved.sum()), "mean": float(moved.mean()) if len(moved) else 0.0,
                        "p05": q[0], "p50": q[1], "p95": q[2],
                        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}},
        **_reason_changes(c),
    }
    if c.decision_ids is not None:
        rows = np.flatnonzero(frame["changed"].to_numpy())[:_EXAMPLES]
        out["examples"] = [_example(c, int(i)) for i in rows]
    return out


def _reason_changes(c: Compared) -> dict[str, dict[str, int]]:
    rows = np.flatnonzero((c.a.reasons != c.b.reasons).any(axis=1))
    a, b = c.a.reasons[rows], c.b.reasons[rows]
    appeared, disappeared = {}, {}
    for code, word in enumerate(c.reasons.words):
        has_a, has_b = (a == code).any(axis=1), (b == code).any(axis=1)
        if (n := int((has_b & ~has_a).sum())):
            appeared[word] = n
        if (n := int((has_a & ~has_b).sum())):
            disappeared[word] = n
    return {"reasons_appeared": appeared, "reasons_disappeared": disappeared}


def _example(c: Compared, i: int) -> dict[str, Any]:
    words = c.reasons.words

    def side(o: Outcome) -> dict[str, Any]:
        return {"decision": DECISIONS.get(int(o.decision[i])), "approved_minor": int(o.approved_minor[i]),
                "apr_bps": int(o.apr_bps[i]), "reasons": [words[r] for r in o.reasons[i] if r >= 0]}

    assert c.decision_ids is not None
    return {"decision_id": c.decision_ids[i], "before": side(c.a), "after": side(c.b)}


def report(c: Compared, lgd: float, policy: Path | None) -> dict[str, Any]:
    """The what-if as one JSON-ready document."""
    if not 0.0 <= lgd <= 1.0:
        raise ConfigError(f"--lgd: must be between 0 and 1, got {lgd}")
    frame = frame_of(c, policy)
    totals = frame.select(_figures(lgd)).to_dicts()[0]
    by = {s: frame.group_by(s).agg(_figures(lgd)).sort("n", s, descending=[True, False]).to_dicts() for s in SEGMENTS}
    return {
        "champion": c.champion, "candidate": c.candidate, "lgd": lgd,
        "currency": load_policy(policy).base_currency, "totals": totals,
        "changes": changes(c, frame), "segments": by,
    }


# --- replay's verdict -------------------------------------------------------------
def summary(rec: Recomputed, first: int = 10) -> dict[str, Any]:
    """What a replay found: how many rows agree, and the first that do not, field by field."""
    d = differs(rec.logged, rec.replayed)
    bad = np.logical_or.reduce(list(d.values())) if len(rec.logged.pd) else np.zeros(0, bool)
    return {
        "decided": len(bad),
        "skipped_replays": rec.log.replays,
        "skipped_refused": rec.log.refused,
        "skipped_without_inputs": rec.log.without_inputs,
        "made_by": rec.makers[0],
        "same_versions": rec.exact[0],
        "identical": int(len(bad) - bad.sum()),
        "mismatched": int(bad.sum()),
        "mismatched_by_field": {k: int(v.sum()) for k, v in d.items()},
        "first_mismatches": [_row(rec, int(i), d) for i in np.flatnonzero(bad)[:first]],
    }


def _row(rec: Recomputed, i: int, d: dict[str, npt.NDArray[np.bool_]]) -> dict[str, Any]:
    out: dict[str, Any] = {"decision_id": rec.log.decided["decision_id"][i]}
    for name in FIELDS:
        if d[name][i]:
            out[name] = {"logged": _value(rec, rec.logged, name, i), "replayed": _value(rec, rec.replayed, name, i)}
    return out


def _value(rec: Recomputed, o: Outcome, name: str, i: int) -> Any:
    if name == "reasons":
        return [rec.reasons.words[r] for r in o.reasons[i] if r >= 0]
    if name == "grade":
        return rec.grades.words[o.grade[i]] if o.grade[i] >= 0 else None
    v = getattr(o, name)[i]
    return None if name == "pd" and np.isnan(v) else v.item()


def inflate(src: Path, dst: Path, rows: int, rows_per_file: int = 250_000) -> int:
    """A log of ``rows`` rows under ``dst`` made of copies of the log under ``src`` (for
    measuring at scale): each copy's batches renumbered, so every row stays unique."""
    df = scan(src)
    if df is None or df.height == 0:
        raise ConfigError(f"{src}: no decision logged there")
    step = int(df["batch_seq"].max()) + 1  # type: ignore[arg-type]
    first = df["logged_at"].min()
    assert isinstance(first, dt.datetime)
    part = dst / f"date={first:%Y-%m-%d}" / f"hour={first:%H}"
    part.mkdir(parents=True, exist_ok=True)
    per_file = max(1, rows_per_file // df.height)
    written, k = 0, 0
    while written < rows:
        copies = [df.with_columns(pl.col("batch_seq") + (k + j) * step,
                                  pl.concat_str(pl.col("decision_id"), pl.lit(f"-{k + j}")).alias("decision_id"))
                  for j in range(per_file)]
        chunk = pl.concat(copies).head(rows - written)
        chunk.write_parquet(part / f"inflated-{k:07d}.parquet")
        written += chunk.height
        k += per_file
    return written
