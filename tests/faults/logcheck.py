"""The decision log after a fault: read it back for the applications a test sent and check it
against what the callers got (docs/decision-log.md, "Durability contract").

What must hold, for every application a caller sent:

- it is logged **at most once as a decision** (``status`` OK and not ``replay``); every other
  answer it got (a retry answered from the idempotency store, an earlier item of the same
  batch) is a ``replay`` row, never a second decision;
- every OK row carries the decision id the caller got: the log holds **no decision the
  caller did not get** (a decision whose answer was lost on the wire is the one its retry
  got from the store, so it too is one the caller got, in the end);
- it is missing only where a process writing the log was SIGKILLed: what such a writer loses
  is the batches appended after its last completed flush. So a missing decision was made by
  a killed engine, and, if its answer reached the caller, that answer came *after* the
  killed writer's last logged row (a batch is appended before its answer goes out) and at
  most ``flush_interval_s`` plus ``FLUSH_ALLOWANCE_S`` before the kill.

Identifiers are keyed hashes: the application ids are hashed here with the log's own key
(``privacy.search_keys`` and ``IdHasher``, as ``creditauth log show`` does) and the rows read
with ``reader.scan`` (journal chunks included: a killed writer's last chunks are in it).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from services.decisionlog.privacy import IdHasher, search_keys
from services.decisionlog.reader import scan
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.sinks.parquet import JOURNAL
from services.schema.codes import Code
from services.schema.records import DecisionBatch, RequestBatch
from services.scoring import ScoringEngine

# One flush's duration (the batches the writer had taken when it was killed are lost with
# it) plus the writer thread's wake-up lateness on a loaded box: docs/decision-log.md gives
# "a few ms to tens of ms" per flush and tests its own SIGKILL bound with 0.1 s of jitter.
# Here the killed process is also busy scoring (its writer thread waits for the GIL), on 2
# shared cores, so twice that: 0.2 s more than ``flush_interval_s``.
FLUSH_ALLOWANCE_S = 0.2


@dataclass
class Got:
    """What the callers got for one application: the decision id, when it was first
    answered (wall clock; None: its first answer was lost, it is known from a retry), and
    how many answers carried it."""

    decision_id: str
    answered_at: float | None = None
    answers: int = 1


class Answers:
    """The callers' side of a run: application id -> ``Got``."""

    def __init__(self) -> None:
        self.by_app: dict[str, Got] = {}
        self.refusals = 0  # items answered with a status (``add_batch``)
        self.sent: set[str] = set()  # every application asked about (read back from the log)
        # Asked, no answer got, and never retried: the call ran out of time (its answer, if
        # it was decided, was lost on the wire). Logged as a decision or not at all.
        self.unanswered: set[str] = set()

    def add(self, application_id: str, decision_id: str, at: float | None = None) -> None:
        """One answer with a decision (``at``: when it arrived, wall clock; default now)."""
        at = time.time() if at is None else at
        self.sent.add(application_id)
        got = self.by_app.get(application_id)
        if got is None:
            self.by_app[application_id] = Got(decision_id, at)
            return
        assert got.decision_id == decision_id, (application_id, got.decision_id, decision_id)
        got.answers += 1

    def add_unanswered(self, application_id: str) -> None:
        self.sent.add(application_id)
        self.unanswered.add(application_id)

    def add_batch(self, out: DecisionBatch) -> None:
        """An engine's answer to a batch: its decided items, and a count of the others."""
        ok = out.status == Code.OK
        ids = out.decision_ids()
        apps = [a.decode() for a in out.rows["application_id"].tolist()]
        at = time.time()
        self.sent.update(apps)
        for i in np.flatnonzero(ok).tolist():
            self.add(apps[i], ids[i], at)
        self.refusals += int((~ok).sum())

    def add_late(self, application_id: str, decision_id: str) -> None:
        """A retry's answer; if it is the first the caller got, the first was lost on the wire."""
        self.sent.add(application_id)
        got = self.by_app.get(application_id)
        if got is None:
            self.by_app[application_id] = Got(decision_id, None, 1)
        else:
            self.add(application_id, decision_id)


def prefix(decision_id: str) -> str:
    """The deciding engine's part of a decision id (one per process / replica)."""
    return decision_id.split("-", maxsplit=1)[0]


def writer_of(pid: int) -> str:
    """The start of the ``replica_id`` of a log written by process ``pid`` on this host (the
    settings name no ``replica_id`` in these tests: ``writer.writer_id``)."""
    return f"{socket.gethostname()}-{pid}-"


def logged(root: Path, data_dir: Path, applications: Iterable[str],
           settings: DecisionLogSettings | None = None) -> pl.DataFrame:
    """Every row of the log under ``root`` for ``applications``, with an ``application_id``
    column (the hash looked up, never stored); keys from ``settings`` (default: the key
    generated beside ``data_dir``)."""
    hashers = [IdHasher(k) for k in search_keys(settings or DecisionLogSettings(), data_dir)]
    by_key = {h.one(a): a for a in applications for h in hashers}
    df = scan(root)
    if df is None:
        return pl.DataFrame(schema=LOG_COLUMNS)
    keys = pl.Series("k", list(by_key), dtype=pl.Binary)
    mine = df.filter(pl.col("application_key").cast(pl.Binary).is_in(keys.implode()))
    return mine.with_columns(
        pl.col("application_key").cast(pl.Binary).replace_strict(by_key, return_dtype=pl.String)
        .alias("application_id"))


# The columns ``check`` reads (an empty log has them too).
LOG_COLUMNS: dict[str, pl.DataType] = {
    "application_id": pl.String(), "replica_id": pl.String(), "logged_at": pl.Datetime("us", "UTC"),
    "status": pl.Int32(), "replay": pl.Boolean(), "decision_id": pl.String(),
}


def holds(root: Path, data_dir: Path, applications: Iterable[str]) -> bool:
    """Whether the log under ``root`` already holds a decided row for every one of
    ``applications`` (a flush has taken them): the observed state a test waits on."""
    wanted = set(applications)
    df = logged(root, data_dir, wanted)
    return set(df.filter(pl.col("status") == int(Code.OK))["application_id"].to_list()) >= wanted


def flushed(root: Path, writer: str) -> bool:
    """Whether a writer (``writer_of``) has completed a flush: a journal chunk of it exists
    (chunks are written hidden and renamed; a cheap look, no read)."""
    return any(root.glob(f"{JOURNAL}/{writer}*/*.arrow"))


@dataclass
class Kill:
    """A SIGKILLed process that wrote the log: when (wall clock), which engines it hosted
    (decision-id prefixes), and the start of its writer's ``replica_id`` (a writer's
    id is ``<host>-<pid>-<random>``: ``writer_of``)."""

    at: float
    prefixes: frozenset[str]
    writer: str


@dataclass
class LogCheck:
    """What the log held for the callers' applications."""

    rows: int = 0
    decisions: int = 0
    replays: int = 0
    refused: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    not_got: list[tuple[str, str, str]] = field(default_factory=list)  # app, logged id, caller's id
    decided_unanswered: int = 0  # logged decisions of calls that ran out of time (answer lost)
    missing: list[str] = field(default_factory=list)
    missing_lost_on_wire: int = 0  # of ``missing``: first answer never reached the caller
    missing_after_kill: int = 0  # of ``missing``: answered after the kill (it was on the wire)
    killed: bool = False  # checked against a SIGKILL
    killed_kept: int = 0  # decisions the killed writer did log (what it had flushed)
    earliest_missing_s: float | None = None  # the oldest missing answer, seconds before the kill
    unexplained: list[str] = field(default_factory=list)  # missing, and not a SIGKILL's loss
    replays_short: list[str] = field(default_factory=list)  # fewer replay rows than repeats got

    def summary(self) -> str:
        text = (f"log: {self.rows} rows for the callers' applications: {self.decisions} decisions, "
                f"{self.replays} replays, {self.refused} refusals; duplicates {len(self.duplicates)}, "
                f"decisions the caller did not get {len(self.not_got)}")
        if self.decided_unanswered:
            text += f" (and {self.decided_unanswered} of calls that ran out of time)"
        text += f"; missing {len(self.missing)}"
        if self.killed:
            window = "" if self.earliest_missing_s is None else (
                f"; the oldest missing answer came {1000 * self.earliest_missing_s:.0f} ms before the kill")
            text += (f" ({self.missing_after_kill} answered after the kill, {self.missing_lost_on_wire} whose "
                     f"answer was lost on the wire); the killed writer kept {self.killed_kept}{window}")
        return text


def check(df: pl.DataFrame, answers: Answers, kill: Kill | None = None, *,
          flush_interval_s: float = DecisionLogSettings().flush_interval_s) -> LogCheck:
    """``df`` (from ``logged``) against ``answers``; ``kill``: the one SIGKILL of the run."""
    out = LogCheck(rows=df.height)
    ok = df.filter(pl.col("status") == int(Code.OK))
    out.refused = df.height - ok.height
    decisions = ok.filter(~pl.col("replay"))
    out.decisions, out.replays = decisions.height, ok.height - decisions.height
    counts = dict(decisions.group_by("application_id").len().iter_rows())
    out.duplicates = {a: n for a, n in counts.items() if n > 1}
    got = answers.by_app
    lost = answers.unanswered - set(got)
    rows = ok.select("application_id", "decision_id").rows()
    out.decided_unanswered = sum(a in lost for a, _ in rows)
    out.not_got = [(a, d, got[a].decision_id if a in got else "") for a, d in rows
                   if a not in lost and (a not in got or got[a].decision_id != d)]
    replays = dict(ok.filter(pl.col("replay")).group_by("application_id").len().iter_rows())
    # Every answer after the first is a replay on record (a retry, or a repeat in a batch).
    out.replays_short = [a for a, g in got.items() if replays.get(a, 0) < g.answers - 1]
    out.missing = sorted(a for a in got if a not in counts)
    if kill is not None:
        out.killed = True
        out.killed_kept = decisions.filter(pl.col("replica_id").str.starts_with(kill.writer)).height
    if out.missing:
        _explain(out, df, got, kill, flush_interval_s + FLUSH_ALLOWANCE_S)
    return out


def _explain(out: LogCheck, df: pl.DataFrame, got: Mapping[str, Got], kill: Kill | None, window_s: float) -> None:
    """Sort the missing decisions into a SIGKILL's allowed loss and the rest (``unexplained``)."""
    if kill is None:
        out.unexplained = list(out.missing)
        return
    last = _last_logged(df, kill)
    ages = []
    for a in out.missing:
        g = got[a]
        if prefix(g.decision_id) not in kill.prefixes:
            out.unexplained.append(a)  # decided by a process that was not killed
        elif g.answered_at is None:
            # Its answer never reached the caller: no caller-side time to measure. It was
            # decided by the killed engine before the kill; what bounds its loss is the
            # writer's prefix property, checked through the answered ones.
            out.missing_lost_on_wire += 1
        elif g.answered_at <= last or kill.at - g.answered_at > window_s:
            out.unexplained.append(a)  # answered before a row the writer did flush, or too early
        else:
            ages.append(kill.at - g.answered_at)
            out.missing_after_kill += g.answered_at > kill.at
    out.earliest_missing_s = max(ages) if ages else None


def _last_logged(df: pl.DataFrame, kill: Kill) -> float:
    """When the killed writer's newest logged row was appended (wall clock, s; -inf: none)."""
    mine = df.filter(pl.col("replica_id").str.starts_with(kill.writer))
    if mine.height == 0:
        return float("-inf")
    newest = mine.select(pl.col("logged_at").max()).item()
    return float(newest.timestamp())


class Recorded:
    """An in-process engine whose every answer is noted (the callers' side, for ``check``)."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine
        self.answers = Answers()
        self.closed = False

    def close(self) -> None:
        """Close the engine once (a graceful stop: its log writes everything)."""
        if not self.closed:
            self.closed = True
            self.engine.close()

    def score(self, batch: RequestBatch, now: float | None = None) -> DecisionBatch:
        out = self.engine.score(batch, now)
        self.answers.add_batch(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def closed_log_is_exact(engine: Recorded, data_dir: Path) -> LogCheck:
    """Close the engine (a graceful stop: its log writes everything) and check the log under
    ``<data_dir>/decisions`` holds each decided item once, each repeat as a replay, each
    refused item as a refusal: no loss is allowed, nothing was killed."""
    engine.close()
    got = engine.answers
    result = check(logged(data_dir / "decisions", data_dir, got.sent), got)
    assert_sound(result)
    assert not result.missing and result.refused == got.refusals, (result.summary(), got.refusals)
    return result


def assert_sound(result: LogCheck) -> None:
    """No duplicate, no decision the caller did not get, no loss a SIGKILL does not explain,
    every repeat on record as a replay."""
    assert not result.duplicates, ("decided twice", list(result.duplicates.items())[:5])
    assert not result.not_got, ("logged decisions the caller did not get", result.not_got[:5])
    assert not result.unexplained, ("missing, not a SIGKILL's loss", result.unexplained[:5], result.summary())
    assert not result.replays_short, ("repeats not logged as replays", result.replays_short[:5])
