"""The decision log: the engine hands over each scored batch, a thread writes it.

``append`` is what the hot path pays: a few numpy copies and a list append under a lock,
nothing per row. The writer thread wakes every ``flush_interval_s``, turns what arrived
into one Arrow table (``schema.to_table``: the keyed hashes are computed here, off the
hot path) and gives it to the sink; if the sink fails, to the spool; if the spool is
full too, ``when_full`` applies: ``refuse`` keeps the batches in memory, retries them
on every flush and makes ``check`` refuse new decisions (``DecisionLogUnavailable``,
answered ``UNAVAILABLE``) until the backlog is written; ``count`` drops them and counts
them in ``stats.unlogged_rows``. ``close`` writes everything that was appended.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from features import FeatureBatch
from services.decisionlog.privacy import IdHasher, load_key
from services.decisionlog.schema import Entry, to_table
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.sinks import Sink
from services.decisionlog.sinks.parquet import ParquetSink
from services.decisionlog.spool import Spool
from services.errors import StoreUnavailable
from services.schema.records import DecisionBatch, Rows
from services.scoring.variants import ShadowLog

log = logging.getLogger(__name__)


class DecisionLogUnavailable(StoreUnavailable):
    """The decision log can take nothing more (sink down, spool full): no new decisions."""


@dataclass
class LogStats:
    appended_batches: int = 0
    appended_rows: int = 0
    logged_rows: int = 0  # taken by the sink
    spooled_rows: int = 0  # taken by the spool (then by the sink when it is back)
    unlogged_rows: int = 0  # given up (when_full: count)
    flushes: int = 0
    max_flush_s: float = 0.0
    sink_failures: int = 0


class DecisionLog:
    def __init__(
        self, sink: Sink, spool: Spool, hasher: IdHasher, replica_id: str, settings: DecisionLogSettings
    ) -> None:
        self._sink = sink
        self._spool = spool
        self._ids = hasher
        self.replica_id = replica_id
        self._s = settings
        self.stats = LogStats()
        self._pending: list[Any] = []  # Entry here; a subclass's own (refusals.Refused)
        self._held: list[pa.Table] = []  # refused by sink and spool, kept for the next flush
        self._seq = 0
        self._full = False
        self._closed = False
        self._cond = threading.Condition()
        self._flushed = threading.Condition()  # notified after every flush
        self._stopping = False
        self._kick = False  # flush now, without waiting for the interval
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()
        # A process that exits without closing its engine (a Ray worker on interpreter exit)
        # still writes what it answered; close() takes this off again.
        atexit.register(self.close)

    @property
    def full(self) -> bool:
        return self._full

    def check(self) -> None:
        """Before deciding a batch: refuse if its decisions could not be logged."""
        if self._full and self._s.when_full == "refuse":
            raise DecisionLogUnavailable("decision log unavailable (sink down and spool full); not deciding")
        if self._closed:
            raise DecisionLogUnavailable("decision log closed")

    def append(
        self,
        requests: Rows,
        answer: DecisionBatch,
        replay: npt.NDArray[np.bool_],
        fresh: npt.NDArray[np.intp],
        features: FeatureBatch | None,
        *,
        shadows: ShadowLog | None = None,
    ) -> None:
        """Hand over one scored batch: ``fresh`` rows were decided here from ``features``' rows
        (and, with shadows, scored by them: ``shadows.scores`` has a row per ``fresh`` row)."""
        decided = ~replay[fresh]  # an id another replica decided first is answered as a replay
        rows = fresh[decided]
        if shadows is not None and not decided.all():
            shadows = ShadowLog(shadows.names, shadows.bundles, shadows.scores[decided])
        if features is None or not len(rows):
            rows, matrix = rows[:0], np.zeros((0, 0), np.float32)
            event_ts, view_ts, words = np.zeros(0, np.int64), None, np.zeros((0, 0), np.uint64)
        elif decided.all():
            # The gathered arrays are this batch's own (the reader builds them per call and
            # the engine is done with them): handed over as they are, no copy needed.
            matrix, event_ts, view_ts = features.matrix, features.event_ts, features.view_ts
            words = features.tag_words()
        else:
            matrix, event_ts = features.matrix[decided], features.event_ts[decided]
            view_ts = features.view_ts[decided] if features.view_ts is not None else None
            words = features.tag_words()[decided]
        entry = Entry(
            requests.copy(), answer.rows.copy(), replay.copy(), rows, matrix, event_ts, view_ts, words,
            answer.reason_table, dict(answer.stage_s), time.time(), shadows,
        )
        with self._cond:
            self.stats.appended_batches += 1
            self.stats.appended_rows += len(entry)
            if len(self._pending) >= self._s.max_pending_batches:
                self._full = True
                if self._s.when_full == "count":
                    self.stats.unlogged_rows += len(entry)
                    return
            self._pending.append(entry)

    # --- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        interval = self._s.flush_interval_s
        due = time.monotonic() + interval
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._kick, timeout=max(0.0, due - time.monotonic()))
                self._kick = False
                batch, self._pending = self._pending, []
                stopping = self._stopping
            due = time.monotonic() + interval
            self._flush(batch)
            if stopping:
                return

    def _flush(self, entries: list[Any]) -> None:
        t0 = time.perf_counter()
        table = self._table(entries)
        backlog = self._drain()
        if table is not None:
            self._deliver(table, straight=not backlog)
        try:
            self._sink.tick(time.time())
        except OSError as exc:
            log.warning("decision log: roll failed: %s", exc)
        with self._cond:
            self._full = bool(self._held) or len(self._pending) >= self._s.max_pending_batches
        with self._flushed:
            st = self.stats
            st.flushes += 1
            st.max_flush_s = max(st.max_flush_s, time.perf_counter() - t0)
            self._flushed.notify_all()

    def flush_soon(self) -> None:
        """Have the writer flush now rather than at the end of its interval (benchmarks, drains)."""
        with self._cond:
            self._kick = True
            self._cond.notify_all()

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for ``condition``, checked after each flush."""
        with self._flushed:
            return self._flushed.wait_for(condition, timeout)

    def _to_table(self, entries: Sequence[Any], first: int) -> pa.Table:
        return to_table(entries, self._ids, self.replica_id, first)

    def _table(self, entries: list[Any]) -> pa.Table | None:
        if not entries:
            return None
        first, self._seq = self._seq, self._seq + len(entries)
        try:
            return self._to_table(entries, first)
        except Exception:  # a bug must not stop the thread: say so, count the loss
            log.exception("decision log: batches %d-%d could not be converted", first, self._seq - 1)
            self.stats.unlogged_rows += sum(len(e) for e in entries)
            return None

    def _drain(self) -> bool:
        """Write the backlog (spool, then held batches) first; True if some remains."""
        self.stats.logged_rows += self._spool.drain(self._sink)
        if self._spool.failure is not None:
            self.stats.sink_failures += 1
            log.warning("decision log: sink still unavailable: %s", self._spool.failure)
            return True
        try:
            while self._held:
                self._sink.write(self._held[0])
                self.stats.logged_rows += self._held.pop(0).num_rows
        except OSError as exc:
            self.stats.sink_failures += 1
            log.warning("decision log: sink still unavailable: %s", exc)
        return bool(self._held) or len(self._spool) > 0

    def _deliver(self, table: pa.Table, straight: bool) -> None:
        if straight:
            try:
                self._sink.write(table)
                self.stats.logged_rows += table.num_rows
                return
            except OSError as exc:
                self.stats.sink_failures += 1
                log.warning("decision log: sink unavailable, spooling: %s", exc)
        if not self._held and self._spool.put(table):
            self.stats.spooled_rows += table.num_rows
        elif self._s.when_full == "count":
            self.stats.unlogged_rows += table.num_rows
        else:
            self._held.append(table)

    def close(self) -> None:
        """Write everything appended (graceful stop); idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            self._cond.notify_all()
        atexit.unregister(self.close)
        self._thread.join()
        if self._held or len(self._spool):
            self._flush([])
        for table in self._held:  # nowhere to go: the last resort is the spool, unbounded
            self._spool.max_bytes = max(self._spool.max_bytes, self._spool.bytes + table.nbytes)
            if not self._spool.put(table):
                self.stats.unlogged_rows += table.num_rows
                log.error("decision log: %d decisions could not be written at close", table.num_rows)
        self._held.clear()
        try:
            self._sink.close()
        except OSError as exc:
            log.error("decision log: sink close failed: %s", exc)
        self._spool.close()


def writer_id(settings: DecisionLogSettings) -> str:
    base = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}-{uuid.uuid4().hex[:6]}"


def open_log(settings: DecisionLogSettings, data_dir: Path) -> DecisionLog | None:
    """The log a replica writes (None when disabled): Parquet under ``settings.root``, or a
    NATS JetStream stream (``sink: nats``; nats-py is imported only then)."""
    if not settings.enabled:
        return None
    wid = writer_id(settings)
    sink: Sink
    if settings.sink == "nats":
        from services.decisionlog.sinks.nats import NatsSink

        sink = NatsSink.from_settings(settings, wid)
    else:
        sink = ParquetSink(
            settings.root(data_dir), wid, roll_bytes=settings.roll_bytes,
            roll_interval_s=settings.roll_interval_s, fsync=settings.fsync,
        )
    spool = Spool(settings.spool_root(data_dir), wid, settings.spool_max_bytes)
    return DecisionLog(sink, spool, IdHasher(load_key(settings, data_dir)), wid, settings)
