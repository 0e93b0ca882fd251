"""The NATS JetStream sink and its compactor against the real server (127.0.0.1:4222):
every decision in the stream once and in Parquet once; NATS down, slow, and back; a lost
acknowledgement; a compactor killed with SIGKILL and started again. Each test has its own
stream (and subjects), deleted afterwards; skipped when there is no server or no nats-py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.writer import DecisionLog, open_log
from services.schema.enums import APPROVE
from services.schema.records import REQUEST_DTYPE, DecisionBatch, blank_decisions

nats = pytest.importorskip("nats")

from services.decisionlog.compactor import Compactor  # noqa: E402  (needs nats-py)
from services.decisionlog.sinks.nats import NatsOptions, NatsSink, read_message  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HOST, PORT = "127.0.0.1", 4222
URL = f"nats://{HOST}:{PORT}"
ROW_KEY = ["replica_id", "batch_seq", "row"]


def _server_up() -> bool:
    """A NATS server answers with its INFO line, which says whether JetStream is on."""
    try:
        with socket.create_connection((HOST, PORT), timeout=0.5) as s:
            s.settimeout(0.5)
            info = s.recv(4096)
    except OSError:
        return False
    return info.startswith(b"INFO") and b'"jetstream":true' in info


pytestmark = pytest.mark.skipif(not _server_up(), reason=f"no NATS server with JetStream at {HOST}:{PORT}")


# --- helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    name: str
    subject: str

    def options(self, url: str = URL, **kw: Any) -> NatsOptions:
        return NatsOptions(servers=(url,), stream=self.name, subject=self.subject, **kw)


async def _admin(fn: Any) -> Any:
    nc = await nats.connect(URL)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture()
def stream() -> Iterator[Stream]:
    tag = uuid.uuid4().hex[:10]
    s = Stream(f"TEST_DECISIONS_{tag}", f"test_decisions_{tag}")
    yield s

    async def delete(js: Any) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(s.name)

    asyncio.run(_admin(delete))


def _stored(s: Stream) -> list[tuple[str, dict[str, str], pa.Table]]:
    """Every message in the stream: subject, headers, table (read directly, not consumed)."""

    async def read(js: Any) -> list[tuple[str, dict[str, str], pa.Table]]:
        info = await js.stream_info(s.name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else []:
            try:
                m = await js.get_msg(s.name, seq)
            except nats.js.errors.NotFoundError:
                continue  # acknowledged (workqueue) or deleted
            out.append((m.subject, m.headers or {}, read_message(m.data)))
        return out

    return list(asyncio.run(_admin(read)))


def _stream_rows(s: Stream) -> pl.DataFrame:
    tables = [t for _, _, t in _stored(s)]
    return pl.from_arrow(pa.concat_tables(tables)) if tables else pl.DataFrame()  # type: ignore[return-value]


def _parquet_rows(out: Path) -> pl.DataFrame:
    """Every row of every Parquet file, as written (no de-duplication on read)."""
    files = sorted(out.glob("date=*/hour=*/*.parquet"))
    return pl.read_parquet(files, hive_partitioning=False) if files else pl.DataFrame()


def _once(df: pl.DataFrame, amounts: list[int], rows_per_batch: dict[int, int]) -> None:
    """Each appended batch (``amount_minor`` = its number) once, whole, and no row twice."""
    assert df.height == sum(rows_per_batch[k] for k in amounts), "no row lost, none doubled"
    assert df.select(ROW_KEY).is_duplicated().sum() == 0, "no row twice"
    per_batch = dict(df.group_by("amount_minor").len().iter_rows())
    assert per_batch == {k: rows_per_batch[k] for k in amounts}


def _settings(tmp: Path, s: Stream, url: str = URL, **kw: Any) -> DecisionLogSettings:
    key = tmp / "id.key"
    if not key.exists():
        key.write_bytes(b"k" * 32)
    cfg: dict[str, Any] = {
        "sink": "nats", "nats_url": url, "nats_stream": s.name, "nats_subject": s.subject,
        "directory": tmp / "decisions", "spool_directory": tmp / "spool", "id_key_file": key,
        "flush_interval_s": 0.05, "nats_timeout_s": 1.0, **kw,
    }
    return DecisionLogSettings(**cfg)


def _append(log: DecisionLog, k: int, n: int) -> None:
    """Batch ``k``: ``n`` answered items, each carrying ``k`` in amount_minor."""
    req = np.zeros(n, REQUEST_DTYPE)
    req["application_id"] = [f"nats-{k}-{i}".encode() for i in range(n)]
    req["merchant_id"] = b"M00000042"
    req["amount_minor"], req["currency"], req["term_months"] = k, 1, 12
    req["deadline"] = time.time() + 60
    rows = blank_decisions(n)
    rows["decision_id"] = [f"d-{k}-{i}".encode() for i in range(n)]
    rows["decision"], rows["approved_minor"], rows["currency"], rows["apr_bps"] = APPROVE, 100_000, 1, 1200
    rows["risk_grade"], rows["pd"] = b"B", 0.02
    rows["model_version"], rows["policy_version"] = b"lgbm-test", b"policy-test"
    log.append(req, DecisionBatch(rows, (), "", {"kernel": 0.001}), np.zeros(n, bool), np.zeros(0, np.intp), None)


def _wait(log: DecisionLog, cond: Any, what: str, timeout: float = 30.0) -> None:
    assert log.wait_until(cond, timeout), f"timed out waiting for {what}: {log.stats}"


def _compact(s: Stream, out: Path, **kw: Any) -> Compactor:
    c = Compactor(s.options(), out, roll_interval_s=60.0, **kw)
    asyncio.run(c.run(until_idle=True))
    return c


class Proxy:
    """A TCP proxy in front of the NATS server: stopped (connections cut, port closed),
    started again on the same port, and slowed (a delay per direction, not a bandwidth cap)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]
        self.url = f"nats://{HOST}:{self.port}"
        self.delay_up = 0.0  # client -> server
        self.delay_down = 0.0  # server -> client (the acknowledgements)
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((HOST, self.port))
        ls.listen(16)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def stop(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            _shut(ls)
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _shut(s)

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            server = socket.create_connection((HOST, PORT))
            with self._lock:
                self._socks += [client, server]
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        due: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def send() -> None:
            while True:
                t, data = due.get()
                if not data:
                    break
                time.sleep(max(0.0, t - time.monotonic()))
                try:
                    dst.sendall(data)
                except OSError:
                    break
            _shut(dst)

        threading.Thread(target=send, daemon=True).start()
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            due.put((time.monotonic() + (self.delay_up if up else self.delay_down), data))
            if not data:
                return


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@pytest.fixture()
def proxy() -> Iterator[Proxy]:
    p = Proxy()
    yield p
    p.stop()


# --- the sink ----------------------------------------------------------------------------


def test_every_decision_is_in_the_stream_once_then_in_parquet_once(
    tmp_path: Path, stream: Stream, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli.main import main

    # The defaults a replica would have (generated key under the data directory), NATS sink.
    settings = DecisionLogSettings(  # a first connection slower than 0.5 s on a loaded machine is no failure
        sink="nats", nats_stream=stream.name, nats_subject=stream.subject, flush_interval_s=0.05, nats_timeout_s=5.0
    )
    sizes = {k: 1 + (k * 7) % 40 for k in range(30)}
    logs = [open_log(settings, tmp_path) for _ in range(2)]  # two replicas, one stream
    for k, n in sizes.items():
        log = logs[k % 2]
        assert log is not None
        _append(log, k, n)
    for log in logs:
        assert log is not None
        log.close()
        assert log.stats.logged_rows == log.stats.appended_rows and log.stats.spooled_rows == 0

    stored = _stored(stream)
    opts = stream.options()
    writers = {log.replica_id for log in logs if log is not None}
    assert {subj for subj, _, _ in stored} == {opts.subject_of(w) for w in writers}, "one subject per writer"
    for subj, headers, table in stored:
        first = table.slice(0, 1).to_pylist()[0]
        assert headers["Nats-Msg-Id"] == f"{first['replica_id']}:{first['batch_seq']}:{first['row']}:{table.num_rows}"
        assert subj == opts.subject_of(first["replica_id"])
    _once(_stream_rows(stream), list(sizes), sizes)

    root = settings.root(tmp_path)
    c = _compact(stream, root)
    assert c.stats.rows == sum(sizes.values()) and c.stats.duplicate_rows == 0
    _once(_parquet_rows(root), list(sizes), sizes)
    assert not _stored(stream), "compacted messages leave the (workqueue) stream"

    # log show / log export read the compactor's files as they read the embedded sink's.
    main(["log", "show", "nats-3-1", "--data-dir", str(tmp_path)])
    assert "decision APPROVE  id d-3-1" in capsys.readouterr().out
    out = tmp_path / "export.parquet"
    span = ["--from", "2000-01-01", "--to", "2100-01-01"]
    main(["log", "export", *span, "--out", str(out), "--data-dir", str(tmp_path)])
    assert pl.read_parquet(out).height == sum(sizes.values())


def test_refusals_travel_on_the_stream_and_are_compacted_beside_the_decisions(
    tmp_path: Path, stream: Stream, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``sink: nats`` a front end's refusals go to the stream too, under its own writer
    subject; the compactor writes them to ``refusals/``, never into the decisions table."""
    from services.cli.main import main
    from services.decisionlog.refusals import open_refusal_log, refusals_root

    settings = DecisionLogSettings(
        sink="nats", nats_stream=stream.name, nats_subject=stream.subject, flush_interval_s=0.05, nats_timeout_s=5.0
    )
    decisions, refusals = open_log(settings, tmp_path), open_refusal_log(settings, tmp_path)
    assert decisions is not None and refusals is not None
    _append(decisions, 1, 3)
    for k in range(4):
        refusals.refused("Authorize", b"caller-a", [(f"refused-{k}".encode(), 3, "requested_amount", "too large")])
    decisions.close()
    refusals.close()
    assert refusals.stats.logged_rows == 4 and refusals.stats.spooled_rows == 0
    writers = (decisions.replica_id, refusals.replica_id)
    assert opts_subjects(stream) == {stream.options().subject_of(w) for w in writers}

    root = settings.root(tmp_path)
    c = _compact(stream, root)
    assert c.stats.rows == 3 + 4 and c.stats.rejected == 0
    assert _parquet_rows(root).height == 3, "no refusal among the decisions"
    refused = _parquet_rows(refusals_root(root))
    assert sorted(refused["application_key"].is_null().to_list()) == [False] * 4
    assert set(refused["replica_id"].to_list()) == {refusals.replica_id}
    assert set(refused["error_field"].to_list()) == {"requested_amount"}
    main(["log", "show", "refused-2", "--data-dir", str(tmp_path)])
    assert "refused by the front end (Authorize)" in capsys.readouterr().out
    span = ["--from", "2000-01-01", "--to", "2100-01-01", "--data-dir", str(tmp_path)]
    for flag, rows in (([], 3), (["--refusals"], 4)):
        out = tmp_path / f"export{len(flag)}.csv"
        main(["log", "export", *span, "--format", "csv", "--out", str(out), *flag])
        assert pl.read_csv(out).height == rows


def opts_subjects(s: Stream) -> set[str]:
    return {subj for subj, _, _ in _stored(s)}


def test_a_flush_larger_than_the_server_payload_is_split_in_order(tmp_path: Path, stream: Stream) -> None:
    from services.decisionlog.bench import _sample_entry
    from services.decisionlog.privacy import IdHasher
    from services.decisionlog.schema import to_table

    rng = np.random.default_rng(3)
    table = to_table([_sample_entry(rng) for _ in range(6)], IdHasher(b"k" * 32), "big-writer", 0)  # ~2.3 MB
    sink = NatsSink(stream.options(timeout_s=5.0), "big-writer")
    try:
        sink.write(table)
        sink.write(table)  # the same flush again: every message a duplicate, stored once
    finally:
        sink.close()
    assert sink.stats.messages >= 6 and sink.stats.duplicates == sink.stats.messages // 2
    print(f"{table.num_rows} rows, {table.nbytes:,} bytes: {sink.stats.messages // 2} messages")
    stored = [t for _, _, t in _stored(stream)]
    assert len(stored) == sink.stats.messages // 2 and all(t.num_rows < table.num_rows for t in stored)
    assert pa.concat_tables(stored).equals(table), "the parts, in order, are the flush"


def test_nats_down_spools_then_drains_when_back(tmp_path: Path, stream: Stream, proxy: Proxy) -> None:
    # Down from the start: the sink's port is closed.
    log = open_log(_settings(tmp_path, stream, proxy.url), tmp_path)
    assert log is not None
    sink = log._sink
    assert isinstance(sink, NatsSink)
    sizes = {k: 5 + k % 3 for k in range(40)}
    for k in range(10):
        _append(log, k, sizes[k])
    _wait(log, lambda: log.stats.spooled_rows == sum(sizes[k] for k in range(10)), "the spool to take the flushes")
    assert log.stats.logged_rows == 0 and sink.stats.connect_failures > 0 and not log.full

    proxy.start()  # back: the spool drains into the stream
    _wait(log, lambda: log.stats.logged_rows == log.stats.appended_rows, "the spool to drain")
    for k in range(10, 20):
        _append(log, k, sizes[k])
    _wait(log, lambda: log.stats.logged_rows == log.stats.appended_rows, "straight to NATS")
    spooled = log.stats.spooled_rows

    proxy.stop()  # down again mid-stream: the connection is cut
    for k in range(20, 30):
        _append(log, k, sizes[k])
    _wait(log, lambda: log.stats.spooled_rows > spooled, "the spool to take over again")
    proxy.start()
    for k in range(30, 40):
        _append(log, k, sizes[k])
    _wait(log, lambda: log.stats.logged_rows == log.stats.appended_rows, "the spool to drain again")
    log.close()
    assert log.stats.unlogged_rows == 0
    assert not list((tmp_path / "spool").glob("*/*.arrow")), "the spool is empty"
    _once(_stream_rows(stream), list(sizes), sizes)
    out = tmp_path / "compacted"
    _compact(stream, out)
    _once(_parquet_rows(out), list(sizes), sizes)


def test_a_lost_acknowledgement_is_retried_and_stored_once(tmp_path: Path, stream: Stream, proxy: Proxy) -> None:
    proxy.start()
    log = open_log(_settings(tmp_path, stream, proxy.url), tmp_path)
    assert log is not None
    sink = log._sink
    assert isinstance(sink, NatsSink)
    sizes = {k: 8 for k in range(12)}
    for k in range(4):
        _append(log, k, 8)
    _wait(log, lambda: log.stats.logged_rows == 32, "the first flushes")
    proxy.delay_down = 2.5  # the server stores what it is sent; its acknowledgements come too late
    for k in range(4, 8):
        _append(log, k, 8)
    _wait(log, lambda: sink.stats.publish_failures > 0 and log.stats.spooled_rows > 0, "an unacknowledged flush")
    proxy.delay_down = 0.0
    for k in range(8, 12):
        _append(log, k, 8)
    _wait(log, lambda: log.stats.logged_rows == log.stats.appended_rows, "the retries to be acknowledged")
    log.close()
    assert sink.stats.duplicates > 0, "the retried messages were already stored: deduplicated by Nats-Msg-Id"
    _once(_stream_rows(stream), list(sizes), sizes)


def test_a_slow_sink_does_not_slow_the_hot_path(tmp_path: Path, stream: Stream, proxy: Proxy) -> None:
    proxy.start()
    proxy.delay_up = proxy.delay_down = 0.15  # 0.3 s per acknowledgement
    log = open_log(_settings(tmp_path, stream, proxy.url, nats_timeout_s=5.0), tmp_path)
    assert log is not None
    sizes = {k: 16 for k in range(400)}
    spent = []
    pace = threading.Event()
    for k in sizes:
        t0 = time.perf_counter()
        _append(log, k, 16)
        spent.append(time.perf_counter() - t0)
        pace.wait(0.005)  # the load's pace, not a synchronisation
    _wait(log, lambda: log.stats.logged_rows == log.stats.appended_rows, "the slow sink to catch up", 60)
    log.close()
    assert log.stats.max_flush_s >= 0.3, "the sink was slow"
    assert log.stats.spooled_rows == 0 and log.stats.unlogged_rows == 0 and not log.full
    # _append builds its arrays too; what append itself costs is less.
    assert statistics.median(spent) < 0.002 and np.percentile(spent, 99) < 0.02, (
        f"append: median {statistics.median(spent) * 1e3:.3f} ms, p99 {np.percentile(spent, 99) * 1e3:.3f} ms"
    )
    print(f"append: median {statistics.median(spent) * 1e3:.3f} ms, p99 {np.percentile(spent, 99) * 1e3:.3f} ms; "
          f"longest flush {log.stats.max_flush_s:.3f} s")
    _once(_stream_rows(stream), list(sizes), sizes)


# A replica logging to NATS under load, a batch every ~2 ms, each row carrying its batch
# number; after each append it says which batch, when, and the writer's stats.
REPLICA = """
import sys, threading, time
from pathlib import Path
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.writer import open_log
from tests.services.test_decisionlog_nats import _append
root, name, subject = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
s = DecisionLogSettings(sink="nats", nats_stream=name, nats_subject=subject, directory=root / "decisions",
                        spool_directory=root / "spool", id_key_file=root / "id.key", flush_interval_s=0.2,
                        nats_timeout_s=5.0)  # the first connection may be slow on a loaded machine
log = open_log(s, root)
pace = threading.Event()
k = 0
while True:
    _append(log, k, 32)
    print(k, time.monotonic(), log.stats.flushes, log.stats.max_flush_s, log.stats.spooled_rows, flush=True)
    k += 1
    pace.wait(0.002)  # the load's pace, not a synchronisation
"""


def test_a_replica_killed_loses_at_most_the_flush_interval(tmp_path: Path, stream: Stream) -> None:
    (tmp_path / "id.key").write_bytes(b"k" * 32)
    proc = subprocess.Popen(
        [sys.executable, "-c", REPLICA, str(tmp_path), stream.name, stream.subject],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    appended: dict[int, float] = {}
    max_flush = 0.0
    with proc.stdout:
        for line in proc.stdout:
            k, t, flushes, mx, spooled = line.split()
            appended[int(k)] = float(t)
            max_flush = float(mx)
            if int(flushes) >= 8:
                break
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert int(spooled) == 0, "NATS took every flush (nothing waits in the spool)"
    df = _stream_rows(stream)
    per_batch = df.group_by("amount_minor").len()
    assert (per_batch["len"] == 32).all(), "batches are whole"
    kept = sorted(per_batch["amount_minor"].to_list())
    assert kept == list(range(len(kept))) and kept, "what is kept is everything up to a point"
    assert df.select(ROW_KEY).is_duplicated().sum() == 0
    lost = [k for k in appended if k >= len(kept)]
    window = 0.2 + max_flush + 0.1  # flush interval, one flush, the writer waking late (shared machine)
    in_window = [k for k, t in appended.items() if t >= t_kill - window]
    assert len(lost) <= len(in_window), f"lost {len(lost)}; {len(in_window)} appended in the last {window:.3f} s"
    print(f"kept {len(kept)} batches, lost {len(lost)}; {len(in_window)} appended in the last {window:.3f} s")
    out = tmp_path / "compacted"
    _compact(stream, out)
    assert sorted(_parquet_rows(out)["amount_minor"].unique().to_list()) == kept


def test_credentials_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "user").write_text("decision-log\n")
    (tmp_path / "password").write_text("s3cret\n")
    s = DecisionLogSettings(sink="nats", nats_user_file=tmp_path / "user", nats_password_file=tmp_path / "password")
    kw = NatsOptions.from_settings(s).credentials()
    assert kw == {"user": "decision-log", "password": "s3cret"}
    with pytest.raises(ValueError, match="go together"):
        DecisionLogSettings(sink="nats", nats_user_file=tmp_path / "user")
    with pytest.raises(ValueError, match="Extra inputs"):
        DecisionLogSettings(sink="nats", nats_password="s3cret")  # type: ignore[call-arg]


# --- the compactor -------------------------------------------------------------------------


def _publish(tmp: Path, s: Stream, writers: int, batches: int) -> dict[int, int]:
    """``writers`` replicas, each flushing ``batches`` batches one by one (a message each)."""
    sizes: dict[int, int] = {}
    for w in range(writers):
        d = tmp / f"w{w}"
        d.mkdir()
        log = open_log(_settings(d, s), d)
        assert log is not None
        for b in range(batches):
            k = w * 1000 + b
            sizes[k] = 3 + (b % 5)
            _append(log, k, sizes[k])
            log.flush_soon()
            _wait(log, lambda log=log: log.stats.logged_rows == log.stats.appended_rows, "a flush")
        log.close()
    return sizes


def test_stream_duplicates_are_dropped_by_writer_and_sequence(tmp_path: Path, stream: Stream) -> None:
    """A retry later than the duplicate window is stored twice (and a re-split retry
    overlaps the first): the compactor writes each row once."""
    sizes = _publish(tmp_path, stream, writers=1, batches=6)
    stored = _stored(stream)

    async def again(js: Any) -> None:
        for i, (subj, _, table) in enumerate(stored[:3]):  # the same rows under new message ids
            await js.publish(subj, _ipc(table), headers={"Nats-Msg-Id": f"late-{i}"})
        _, _, last = stored[-1]
        await js.publish(stored[-1][0], _ipc(last.slice(1)), headers={"Nats-Msg-Id": "resplit"})

    asyncio.run(_admin(again))
    c = _compact(stream, tmp_path / "out")
    dup = sum(t.num_rows for _, _, t in stored[:3]) + stored[-1][2].num_rows - 1
    assert c.stats.duplicate_rows == dup
    _once(_parquet_rows(tmp_path / "out"), list(sizes), sizes)


def test_a_message_that_is_not_a_log_table_is_kept_aside_not_lost(tmp_path: Path, stream: Stream) -> None:
    sizes = _publish(tmp_path, stream, writers=1, batches=3)

    async def foreign(js: Any) -> None:
        await js.publish(f"{stream.subject}.stranger", b"not arrow at all")
        await js.publish(f"{stream.subject}.stranger", _ipc(pa.table({"x": [1, 2]})))

    asyncio.run(_admin(foreign))
    out = tmp_path / "out"
    c = _compact(stream, out)
    assert c.stats.rejected == 2
    kept = sorted((out / "_compactor" / f"{stream.name}-compactor" / "rejected").iterdir())
    assert len(kept) == 2 and kept[0].read_bytes() == b"not arrow at all"
    _once(_parquet_rows(out), list(sizes), sizes)
    assert not _stored(stream)


def _ipc(table: pa.Table) -> bytes:
    from services.decisionlog.sinks.nats import ipc_bytes

    return ipc_bytes(table)


# The compactor in a process of its own, killed at a chosen point with SIGKILL (by itself,
# so the point is exact) or at a random one by the test. Small rolls: a file per fetch.
COMPACTOR = """
import asyncio, os, signal, sys, time
from pathlib import Path
from services.decisionlog.compactor import Compactor
from services.decisionlog.sinks.nats import NatsOptions
URL, name, subject, out, crash = sys.argv[1:6]
c = Compactor(NatsOptions(servers=(URL,), stream=name, subject=subject), Path(out),
              roll_bytes=1, roll_interval_s=60.0, fetch_batch=4)
rolls = 0
write, save = c._write, c._save
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
def crash_write(roll):
    global rolls
    rolls += 1
    if crash == "random":
        time.sleep(0.01)
    write(roll)
    print("rolled", rolls, flush=True)
    if crash == "after-rename" and rolls == 3:
        kill()  # files renamed into place, their messages not acknowledged
    if crash == "random":
        time.sleep(0.01)
def crash_save(state):
    if crash == "before-commit" and rolls == 3:
        kill()  # temporary files written, nothing committed
    save(state)
c._write, c._save = crash_write, crash_save
asyncio.run(c.run(until_idle=True))
print("done", flush=True)
"""


@pytest.mark.parametrize("crash", ["before-commit", "after-rename", "random"])
def test_a_compactor_killed_and_restarted_loses_nothing_and_doubles_nothing(
    tmp_path: Path, stream: Stream, crash: str
) -> None:
    sizes = _publish(tmp_path, stream, writers=3, batches=12)
    out = tmp_path / "out"
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", COMPACTOR, URL, stream.name, stream.subject, str(out), crash],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
        )
        assert proc.stdout is not None
        with proc.stdout:
            if crash == "random":
                for line in proc.stdout:
                    if line.startswith("rolled") and int(line.split()[1]) >= 2 + uuid.uuid4().int % 4:
                        os.kill(proc.pid, signal.SIGKILL)
                        break
            proc.wait(timeout=120)
    stderr = (tmp_path / "stderr").read_text()
    assert proc.returncode == -signal.SIGKILL, f"the compactor was killed mid-way ({proc.returncode}): {stderr[-2000:]}"
    written = _parquet_rows(out)
    assert 0 < written.height < sum(sizes.values()), "it had written part of the stream"
    if crash == "before-commit":
        assert list(out.glob("date=*/hour=*/.*.tmp")), "killed with uncommitted temporary files"

    again = _compact(stream, out)  # started again: rewinds to the unacknowledged messages
    assert not list(out.glob("date=*/hour=*/.*.tmp")), "uncommitted temporary files removed"
    if crash == "after-rename":
        assert again.stats.duplicate_rows > 0, "the renamed, unacknowledged rows were read again and dropped"
    _once(_parquet_rows(out), list(sizes), sizes)
    assert not _stored(stream), "every message acknowledged"
    state = json.loads((out / "_compactor" / f"{stream.name}-compactor" / "state.json").read_text())
    assert len(state["high_water"]) == 3, "a mark per writer"
