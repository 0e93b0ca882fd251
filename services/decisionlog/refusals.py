"""Items the front end refuses (they never reach a replica), on record with their status.

A sibling table of the decision log, in the same partition layout under
``<root>/refusals/`` (``date=YYYY-MM-DD/hour=HH/<writer>-<seg>.parquet``), written by the
same machinery (``DecisionLog``'s writer thread, journal, spool, roll) under the front
end's own writer id (``frontend-<host>-<pid>-<random>``). A table of its own rather than
rows in the decisions table: a refused item has no decision, no inputs, no versions, so
replay and what-if, which read every row of that table as a decision, never see one.
``reader.lookup`` reads both, so ``creditauth log show`` finds either.

One row per refused item: ``replica_id`` (the writer), ``logged_at``, ``batch_seq`` (one
per refusing call), ``row``; ``rpc``, ``caller`` ("" when not identified), ``status``,
``error_field``, ``error_message`` (both cut to ``MAX_TEXT``); ``application_key`` and
``merchant_key`` (keyed hashes, as in the decisions table; null where the id was not
decoded); the request's fields where the item was decoded into a record (refused by
grant, overload, deadline), else null.

The event loop pays one append of a few tuples per refusing call (``refused``); the keyed
hashes and the table are made on the writer thread.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from services.decisionlog.privacy import KEY_BYTES, IdHasher, load_key
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.sinks import Sink
from services.decisionlog.sinks.parquet import REFUSALS, ParquetSink
from services.decisionlog.spool import Spool
from services.decisionlog.writer import DecisionLog
from services.schema.currency import CURRENCIES
from services.schema.records import REQUEST_DTYPE, Rows

LAYOUT_VERSION = "1"
PENDING_PER_BATCH = 64  # 4096 x 64 calls per flush interval (0.5 s): ~500,000 refusing calls/s
MAX_TEXT = 256  # characters of a field or message kept (the wire's own bound is of this order)
_CURRENCY = [c.code for c in CURRENCIES]

# (application id as decoded, b"" when it was not; status; field; message)
Item = tuple[bytes, int, str, str]


class Refused:
    """One refusing call's items; ``rows``: their request records, when they were decoded
    (an array, or the records' bytes as the codec made them: no numpy on the event loop).

    A plain slotted class: made on the event loop, so no dataclass machinery (3x dearer)."""

    __slots__ = ("caller", "items", "logged_at", "rows", "rpc")

    def __init__(
        self, rpc: str, caller: bytes, items: Sequence[Item], rows: Rows | bytes | None, logged_at: float
    ) -> None:
        self.rpc, self.caller, self.items, self.rows, self.logged_at = rpc, caller, items, rows, logged_at

    def __len__(self) -> int:
        return len(self.items)


def refusals_root(root: Path) -> Path:
    return root / REFUSALS


class RefusalLog(DecisionLog):
    """The decision log's writer, fed refused items instead of scored batches.

    Its pending bound is ``PENDING_PER_BATCH`` times the decisions' (in calls): a refusing
    call is a few tuples, not a batch of arrays, and refusals come in floods (load shed).
    """

    def refused(self, rpc: str, caller: bytes, items: Sequence[Item], rows: Rows | bytes | None = None) -> None:
        """Hand over a call's refused items (``rows``, if given, one record per item)."""
        entry = Refused(rpc, caller, items, rows, time.time())
        with self._cond:
            self.stats.appended_batches += 1
            self.stats.appended_rows += len(entry)
            if self._closed or len(self._pending) >= self._s.max_pending_batches * PENDING_PER_BATCH:
                # A refusal cannot itself be refused: it is counted as not logged.
                self.stats.unlogged_rows += len(entry)
                return
            self._pending.append(entry)

    def _to_table(self, entries: Sequence[Any], first: int) -> pa.Table:
        return refusal_table(entries, self._ids, self.replica_id, first)


def _repeat(per_call: list[str], sizes: list[int]) -> pa.Array:
    """One string per call, repeated for its items (dictionary-encoded: few distinct values)."""
    values = pa.array(per_call, pa.string()).dictionary_encode()
    idx = np.repeat(np.asarray(values.indices), sizes)
    return pa.DictionaryArray.from_arrays(pa.array(idx), values.dictionary).cast(pa.string())


def _keys(ids: IdHasher, values: Sequence[bytes]) -> pa.Array:
    """Keyed hashes, null for an id that was not decoded."""
    return pa.array([ids.digest(v) if v else None for v in values], pa.binary(KEY_BYTES))


def _requests(entries: Sequence[Refused], sizes: list[int]) -> tuple[Rows, np.ndarray]:
    """The items' records joined (zeros where an item has none) and which have one."""
    width = REQUEST_DTYPE.itemsize
    # Joined as bytes: np.concatenate of many small structured arrays promotes every field
    # of every part (30 us a call, measured), a bytes join costs well under 1 us a part.
    parts = [
        bytes(k * width) if e.rows is None else e.rows if isinstance(e.rows, bytes) else e.rows.tobytes()
        for e, k in zip(entries, sizes, strict=True)
    ]
    req = np.frombuffer(b"".join(parts), REQUEST_DTYPE).copy()
    has = np.repeat(np.array([e.rows is not None for e in entries], bool), sizes)
    return req, has


def _request_columns(req: Rows, has: np.ndarray, ids: IdHasher) -> dict[str, pa.Array]:
    null = ~has
    cur = req["currency"].astype(np.int64)
    codes = [_CURRENCY[c] if 0 <= c < len(_CURRENCY) else "" for c in cur.tolist()]
    merchants = [m if h else b"" for m, h in zip(req["merchant_id"].tolist(), has.tolist(), strict=True)]
    return {
        "merchant_key": _keys(ids, merchants),
        "amount_minor": pa.array(req["amount_minor"], mask=null),
        "currency": pa.array(codes, pa.string(), mask=null),
        "term_months": pa.array(req["term_months"], mask=null),
        "product": pa.array(req["product"], mask=null),
        "channel": pa.array(req["channel"], mask=null),
        "declared_revenue_minor": pa.array(req["declared_revenue_minor"], mask=null | np.isnan(
            req["declared_revenue_minor"].astype(np.float64))),
        "deadline": pa.array((req["deadline"] * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"), mask=null),
    }


def refusal_table(entries: Sequence[Refused], ids: IdHasher, writer: str, first_seq: int) -> pa.Table:
    """The refused items of one flush (calls numbered from ``first_seq``) as one table."""
    sizes = [len(e) for e in entries]
    n = sum(sizes)
    items = [it for e in entries for it in e.items]
    req, has = _requests(entries, sizes)
    # An item with a record takes its application id from it; others as decoded (or none).
    apps = [r if h else it[0] for r, h, it in zip(req["application_id"].tolist(), has.tolist(), items, strict=True)]
    cols: dict[str, pa.Array] = {
        "replica_id": pa.array([writer] * n, pa.string()),
        "logged_at": pa.array(
            (np.repeat([e.logged_at for e in entries], sizes) * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC")
        ),
        "batch_seq": pa.array(np.repeat(np.arange(first_seq, first_seq + len(entries), dtype=np.int64), sizes)),
        "row": pa.array((np.arange(n) - np.repeat(np.cumsum([0, *sizes[:-1]]), sizes)).astype(np.int32)),
        "refused_by": pa.array(["frontend"] * n, pa.string()),
        "rpc": _repeat([e.rpc for e in entries], sizes),
        "caller": _repeat([e.caller.decode("utf-8", "replace") for e in entries], sizes),
        "status": pa.array(np.array([it[1] for it in items], np.int8)),
        "error_field": pa.array([it[2][:MAX_TEXT] for it in items], pa.string()),
        "error_message": pa.array([it[3][:MAX_TEXT] for it in items], pa.string()),
        "application_key": _keys(ids, apps),
        **_request_columns(req, has, ids),
    }
    return pa.table(cols).replace_schema_metadata({"creditauth.refusals": LAYOUT_VERSION})


def open_refusal_log(settings: DecisionLogSettings, data_dir: Path) -> RefusalLog | None:
    """The front end's refusal log (None when the decision log is disabled), to the same sink
    as the decisions: Parquet under ``<root>/refusals``, or the NATS stream under the front
    end's own writer subject (the compactor puts them under ``refusals/`` by their table's
    mark); its spool beside the decisions' spool; the same identifiers' key.
    """
    if not settings.enabled:
        return None
    base = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    wid = f"frontend-{base}-{uuid.uuid4().hex[:6]}"
    sink: Sink
    if settings.sink == "nats":
        from services.decisionlog.sinks.nats import NatsSink

        sink = NatsSink.from_settings(settings, wid)
    else:
        sink = ParquetSink(refusals_root(settings.root(data_dir)), wid, roll_bytes=settings.roll_bytes,
                           roll_interval_s=settings.roll_interval_s, fsync=settings.fsync)
    spool_root = settings.spool_root(data_dir)
    # Beside, not inside, the decisions' spool: a spool adopts every stopped writer's
    # directory under its root, and refusals must not drain into the decisions' sink.
    spool = Spool(spool_root.with_name(f"{spool_root.name}-{REFUSALS}"), wid, settings.spool_max_bytes)
    return RefusalLog(sink, spool, IdHasher(load_key(settings, data_dir)), wid, settings)
