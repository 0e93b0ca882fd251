"""The compactor: the decision stream into the embedded sink's Parquet layout.

``creditauth log compact --out DIR`` reads the stream with a durable pull consumer and
writes ``date=YYYY-MM-DD/hour=HH/<stream>-<durable>-<seq>.parquet`` (zstd, the embedded
sink's dictionary and statistics columns, hidden temporary name then rename): the same
layout, so ``creditauth log show|export`` and ``polars.scan_parquet`` read it unchanged.

A roll (``roll_bytes`` of rows held, ``roll_interval_s`` since the first, or half the
consumer's ``max_ack_pending`` messages) is committed in three steps:

1. every hour's rows to a hidden temporary file beside its final name;
2. the state file ``_compactor/<stream>-<durable>/state.json`` (temporary, renamed): the
   renames to make, each writer's high-water row and the next file number; this is the
   commit point;
3. the renames, then the acknowledgements of every message in the roll.

Killed before 2, the temporary files are removed at the next start and nothing was
acknowledged; killed after 2, the next start finishes the renames. Either way the
messages not acknowledged are read again, and those already in files are dropped:

- **At start the consumer is rewound** to its acknowledgement floor (deleted and created
  again from the first unacknowledged message), so the stream is read in order.
- **Duplicates are dropped by (writer id, sequence).** A writer publishes its rows in
  order (``sinks/nats.py``: one message after the other, a retry resends the same rows),
  so in stream order a writer's rows only go up, except repeats; a row at or below its
  writer's high-water mark (``batch_seq``, ``row``) is already in a file, or in the roll
  being made, and is dropped: a message read again after a crash, or a retried publish
  stored twice because it came after JetStream's duplicate window.

The front end's refusals (``refusals.py``) travel on the same stream under their own
writers' subjects; a message whose table says it is one (its schema metadata
``creditauth.refusals``) goes to the sibling table ``<out>/refusals/``, as the embedded sink
writes it, so ``creditauth log show`` finds them and replay never reads one as a decision.

One compactor per durable consumer and output directory (a lock in the state directory
says so). With the default workqueue retention an acknowledged message leaves the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.decisionlog.owned import OwnedDir
from services.decisionlog.sinks.nats import NatsOptions, api_timeout, connect, ensure_stream, read_message
from services.decisionlog.sinks.parquet import DICTIONARY, REFUSALS, STATISTICS, segment_file
from services.errors import ConfigError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)
STATE_DIR = "_compactor"
REQUIRED = {"replica_id", "batch_seq", "row", "logged_at"}  # what the compactor reads of a row
META = b"creditauth.compactor"
REFUSAL_META = b"creditauth.refusals"  # refusals.refusal_table's mark (not imported: the writer side)
# A roll's groups: (sub-directory, hour); "" is the decisions table, REFUSALS its sibling.
_Group = tuple[str, int]
_TABLES = ("", REFUSALS)
_HOUR_US = 3_600_000_000
# A writer unseen this long is forgotten (its high-water mark): a repeat of its rows cannot
# come later than its spool is drained, which is minutes to hours, not a month.
HORIZON_S = 30 * 86400.0
# Bytes one fetch may bring: under the server's per-client outbound limit (max_pending,
# 64 MiB by default), past which it cuts a "slow consumer".
FETCH_BYTES = 32 * 1024 * 1024


def _keys(table: pa.Table) -> np.ndarray:
    """(batch_seq, row) as one ordered int64 per row."""
    b = np.asarray(table["batch_seq"].to_numpy(), dtype=np.int64)
    r = np.asarray(table["row"].to_numpy(), dtype=np.int64)
    keys: np.ndarray = (b << 32) | r
    return keys


def _hours(table: pa.Table) -> np.ndarray:
    hours: np.ndarray = np.asarray(pc.cast(table["logged_at"], pa.int64()).to_numpy() // _HOUR_US, dtype=np.int64)
    return hours


@dataclass
class CompactStats:
    messages: int = 0
    rows: int = 0  # written to Parquet
    duplicate_rows: int = 0  # dropped: already written (or already in the roll)
    rejected: int = 0  # messages that are not a decision-log table (kept aside, acknowledged)
    files: int = 0
    rolls: int = 0


@dataclass
class _Roll:
    groups: dict[_Group, list[pa.Table]]
    msgs: list[Msg]
    nbytes: int = 0
    opened: float = 0.0


class Compactor:
    def __init__(
        self, opts: NatsOptions, out: Path, *, durable: str = "compactor", roll_bytes: int = 64 * 1024 * 1024,
        roll_interval_s: float = 60.0, fsync: bool = False, fetch_batch: int = 256, idle_s: float = 1.0,
        max_ack_pending: int = 20_000,
    ) -> None:
        self._o = opts
        self.out = out
        self.durable = durable
        self.name = f"{opts.stream}-{durable}"
        self._roll_bytes = roll_bytes
        self._roll_s = roll_interval_s
        self._fsync = fsync
        self._batch = fetch_batch
        self._idle_s = idle_s
        self._max_ack_pending = max_ack_pending
        self.stats = CompactStats()
        self._lock: OwnedDir | None = None
        self._hw: dict[str, list[float]] = {}  # writer -> [high-water key, last seen]: committed
        self._work: dict[str, int] = {}  # the same with the roll in progress
        self._next_seg = 0
        self._roll = self._new_roll()

    @property
    def state_dir(self) -> Path:
        return self.out / STATE_DIR / self.name

    def _table_root(self, kind: str) -> Path:
        return self.out / kind if kind else self.out

    # --- start: the state, the renames left to do --------------------------------------

    def open(self) -> None:
        """Take the lock, load the state, finish or undo the roll a killed run left."""
        try:
            self._lock = OwnedDir(self.state_dir)
        except OSError as exc:
            raise ConfigError(f"{self.out} is being compacted from {self.name} by another process") from exc
        state = self._load()
        for tmp, final in state.get("commit", []):
            t, f = self.out / tmp, self.out / final
            if t.exists():
                os.replace(t, f)  # committed, not yet renamed: finish
            elif not f.exists():
                log.error("decision log compactor: %s is gone (committed, then removed by someone)", f)
        for table in _TABLES:
            for t in self._table_root(table).glob(f"date=*/hour=*/.{self.name}-*.parquet.tmp"):
                t.unlink()  # written, never committed: its messages were not acknowledged
        self._hw = {w: [int(k), float(seen)] for w, (k, seen) in state.get("high_water", {}).items()}
        self._next_seg = int(state.get("next_seg", 0))
        self._work = {w: int(v[0]) for w, v in self._hw.items()}

    def _load(self) -> dict[str, Any]:
        path = self.state_dir / "state.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        return self._rebuild()

    def _rebuild(self) -> dict[str, Any]:
        """No state file (first run, or it was lost): the marks from the files' footers."""
        hw: dict[str, list[float]] = {}
        seg = -1
        files = [f for t in _TABLES for f in self._table_root(t).glob(f"date=*/hour=*/{self.name}-*.parquet")]
        for f in files:
            seg = max(seg, int(f.stem.rsplit("-", 1)[1]))
            meta = (pq.read_schema(f).metadata or {}).get(META)
            for w, k in json.loads(meta or b"{}").get("high_water", {}).items():
                if w not in hw or k > hw[w][0]:
                    hw[w] = [k, time.time()]
        if files:
            log.warning("decision log compactor: no state file; marks rebuilt from %d file(s)", len(files))
        return {"high_water": hw, "next_seg": seg + 1}

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release(remove=False)
            self._lock = None

    # --- the stream ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None, *, until_idle: bool = False) -> CompactStats:
        """Compact until ``stop`` is set (or, ``until_idle``, until nothing is left to read)."""
        stop = stop or asyncio.Event()
        self.open()
        try:
            nc = await connect(self._o, f"creditauth-compactor-{self.durable}")
            try:
                js = nc.jetstream(timeout=api_timeout(self._o))
                await ensure_stream(js, self._o, publisher=False)
                sub = await self._subscribe(js)
                await self._consume(nc, sub, stop, until_idle)
            finally:
                await nc.close()
        finally:
            self.close()
        return self.stats

    async def _subscribe(self, js: JetStreamContext) -> Any:
        """The durable consumer, rewound to its first unacknowledged message (created again:
        the messages it had delivered and not had acknowledged are delivered again, in
        stream order, at once rather than after their ``ack_wait``)."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        floor = 0
        try:
            info = await js.consumer_info(self._o.stream, self.durable)
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            await js.delete_consumer(self._o.stream, self.durable)
        except NotFoundError:
            pass
        # A workqueue stream holds only what is unacknowledged: all of it, from its first.
        if (await js.stream_info(self._o.stream)).config.retention == api.RetentionPolicy.WORK_QUEUE:
            floor = 0
        cfg = api.ConsumerConfig(
            durable_name=self.durable, ack_policy=api.AckPolicy.EXPLICIT,  # every subject of the stream
            ack_wait=self._roll_s * 2 + 60, max_ack_pending=self._max_ack_pending, max_deliver=-1,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if floor else api.DeliverPolicy.ALL,
            opt_start_seq=floor + 1 if floor else None,
        )
        await js.add_consumer(self._o.stream, cfg)
        return await js.pull_subscribe_bind(durable=self.durable, stream=self._o.stream)

    async def _consume(self, nc: Client, sub: Any, stop: asyncio.Event, until_idle: bool) -> None:
        batch = max(1, min(self._batch, FETCH_BYTES // max(1, nc.max_payload)))
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=self._idle_s)
            except asyncio.TimeoutError:  # nothing to read (nats-py raises its own or asyncio's)
                msgs = []
            for m in msgs:
                self._take(m)
            if self._due():
                await self._commit(nc)
            if until_idle and not msgs and (await sub.consumer_info()).num_pending == 0:
                break
        await self._commit(nc)

    def _due(self) -> bool:
        r = self._roll
        return bool(r.msgs) and (
            r.nbytes >= self._roll_bytes
            or time.monotonic() - r.opened >= self._roll_s
            or len(r.msgs) >= self._max_ack_pending // 2
        )

    def _new_roll(self) -> _Roll:
        return _Roll(defaultdict(list), [], 0, time.monotonic())

    def _take(self, m: Msg) -> None:
        """One message into the roll: its rows above their writer's mark, by hour."""
        if not self._roll.msgs:
            self._roll.opened = time.monotonic()
        self._roll.msgs.append(m)
        self.stats.messages += 1
        try:
            table = read_message(m.data)
            missing = REQUIRED - set(table.schema.names)
            if missing:
                raise KeyError(f"no column {', '.join(sorted(missing))}")
        except (pa.ArrowException, KeyError) as exc:
            self._reject(m, exc)
            return
        if not table.num_rows:
            return
        names = table["replica_id"]
        writers = pc.unique(names).to_pylist()
        # The sink's messages hold one writer's rows; anything else is taken writer by writer.
        for part in [table] if len(writers) == 1 else [table.filter(pc.equal(names, w)) for w in writers]:
            self._take_rows(part)

    def _take_rows(self, table: pa.Table) -> None:
        kind = REFUSALS if REFUSAL_META in (table.schema.metadata or {}) else ""
        writer = table["replica_id"][0].as_py()
        keys = _keys(table)
        mark = self._work.get(writer, -1)
        keep = keys > mark
        if not keep.all():
            self.stats.duplicate_rows += int((~keep).sum())
            table, keys = table.filter(pa.array(keep)), keys[keep]
        if not table.num_rows:
            return
        self._work[writer] = max(mark, int(keys.max()))
        hours = _hours(table)
        for h in np.unique(hours).tolist():
            part = table if (hours == h).all() else table.filter(pa.array(hours == h))
            self._roll.groups[kind, int(h)].append(part)
            self._roll.nbytes += part.nbytes

    def _reject(self, m: Msg, exc: Exception) -> None:
        """Not a decision-log table: kept aside (for a person to look at), then acknowledged."""
        seq = m.metadata.sequence.stream
        d = self.state_dir / "rejected"
        d.mkdir(exist_ok=True)
        (d / f"{seq:012d}.bin").write_bytes(m.data)
        self.stats.rejected += 1
        log.error("decision log compactor: message %d is not a decision-log table (%s); kept in %s", seq, exc, d)

    async def _commit(self, nc: Client) -> None:
        roll, self._roll = self._roll, self._new_roll()
        if not roll.msgs:
            return
        if roll.groups:
            await asyncio.to_thread(self._write, roll)
        for m in roll.msgs:
            await m.ack()
        await nc.flush(timeout=math.ceil(api_timeout(self._o)))
        self.stats.rolls += 1

    def _write(self, roll: _Roll) -> None:
        """Temporary files, the state (commit point), the renames."""
        files: list[tuple[Path, Path]] = []
        marks: dict[str, int] = {}
        for kind, hour in sorted(roll.groups):
            table = pa.concat_tables(roll.groups[kind, hour], promote_options="default")
            target = segment_file(self._table_root(kind), self.name, self._next_seg, hour)
            self._next_seg += 1
            tmp = target.with_name(f".{target.name}.tmp")
            target.parent.mkdir(parents=True, exist_ok=True)
            keys, names = _keys(table), table["replica_id"].to_numpy(zero_copy_only=False)
            mine = {w: int(keys[names == w].max()) for w in np.unique(names).tolist()}  # this file's marks
            for w, k in mine.items():
                marks[w] = max(marks.get(w, -1), k)
            meta = dict(table.schema.metadata or {})
            meta[META] = json.dumps({"high_water": mine}).encode()
            pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd",
                           use_dictionary=DICTIONARY, write_statistics=STATISTICS)
            if self._fsync:
                _fsync(tmp)
            files.append((tmp, target))
            self.stats.rows += table.num_rows
        now = time.time()
        for w, k in marks.items():
            self._hw[w] = [k, now]
        self._hw = {w: v for w, v in self._hw.items() if now - v[1] < HORIZON_S}
        self._save({
            "version": 1,
            "stream": self._o.stream,
            "next_seg": self._next_seg,
            "high_water": self._hw,
            "commit": [[str(t.relative_to(self.out)), str(f.relative_to(self.out))] for t, f in files],
        })
        for tmp, target in files:
            os.replace(tmp, target)
        self.stats.files += len(files)

    def _save(self, state: dict[str, Any]) -> None:
        path = self.state_dir / "state.json"
        tmp = path.with_name(".state.json.tmp")
        tmp.write_text(json.dumps(state, indent=1))
        if self._fsync:
            _fsync(tmp)
        os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stats_dict(stats: CompactStats) -> dict[str, int]:
    return asdict(stats)
