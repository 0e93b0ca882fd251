"""Benchmarks of the decision log (figures in docs/decision-log.md; not tests).

``python -m services.decisionlog.bench cost --data-dir DIR [--sink nats]``: the log's cost on
engine batch scoring, log on against off, in one process, rounds alternating. An "on" round ends only
when the log has written everything it was given, so the writer thread's work is inside
the round's time; CPU seconds (every thread of the process) are reported beside the wall.

``python -m services.decisionlog.bench writer``: CPU per decision of each step of the writer
thread (conversion with the keyed hashes, journal chunk, roll to Parquet).

``python -m services.decisionlog.bench sinks``: appending batches of 512 decision records
to NATS JetStream (one Arrow IPC message per batch, acknowledged) and to PostgreSQL
(``COPY`` of the same rows as CSV written by pyarrow, committed), same batches, interleaved; decisions/s and p50/p99
per append.

``python -m services.decisionlog.bench nats-vs-parquet``: the whole log (``append`` on the
hot path, the writer thread, the sink) with the Parquet sink and with the NATS sink, rounds
alternating: decisions/s from the first append until the last is durable, the cost of
``append`` itself, CPU per decision of the process (every thread) and of the NATS server;
then the compactor over what the NATS rounds published, CPU per decision.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from services.schema.records import REQUEST_DTYPE, RequestBatch
from services.settings import Settings, load_settings

BATCH = 512


def _requests(n: int, merchants: int, rng: np.random.Generator) -> RequestBatch:
    r = np.zeros(n, REQUEST_DTYPE)
    r["application_id"] = [f"bench-{uuid.uuid4().hex[:24]}".encode() for _ in range(n)]
    r["merchant_id"] = [f"M{i:08d}".encode() for i in rng.integers(0, merchants, n).tolist()]
    r["caller"] = b"bench"
    r["amount_minor"] = rng.integers(10_000, 5_000_000, n)
    r["currency"], r["term_months"], r["product"], r["channel"] = 1, 12, 1, 1
    r["declared_revenue_minor"] = np.nan
    r["deadline"] = time.time() + 3600
    return RequestBatch(r)


def _settings(data_dir: Path, log_dir: Path, enabled: bool, **log: Any) -> Settings:
    return load_settings(None, {
        "features": {"data_dir": data_dir, "max_feature_age_s": 10 * 365 * 86400.0},
        "decision_log": {"enabled": enabled, "directory": log_dir / "decisions", "id_key_file": log_dir / "key",
                         "spool_directory": log_dir / "spool", **log},
    })


def _round(engine: Any, batches: list[RequestBatch]) -> tuple[float, float]:
    """Wall and CPU seconds to score ``batches`` and, with a log, to have them written."""
    w0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        engine.score(b)
    log = engine._log
    if log is not None:
        log.flush_soon()  # what is left is written now, not at the next tick (no idle wait)
    if log is not None and not log.wait_until(lambda: log.stats.logged_rows >= log.stats.appended_rows, 60.0):
        raise RuntimeError("the log did not keep up within 60 s")
    return time.perf_counter() - w0, time.process_time() - c0


def _unary_p50(engine: Any, items: list[RequestBatch]) -> float:
    times = []
    for b in items:
        t0 = time.perf_counter()
        engine.score(b)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cost(args: argparse.Namespace) -> None:
    from services.scoring.factory import build_engine

    rng = np.random.default_rng(7)
    tag = uuid.uuid4().hex[:8]
    deleted = _stream_deleted(args.nats, f"BENCH_COST_{tag}") if args.sink == "nats" else nullcontext()
    with tempfile.TemporaryDirectory() as tmp, deleted:
        log_dir = Path(tmp)
        (log_dir / "key").write_bytes(uuid.uuid4().hex.encode())
        sink = {"sink": args.sink, "nats_url": args.nats, "nats_stream": f"BENCH_COST_{tag}",
                "nats_subject": f"bench_cost_{tag}", "nats_max_bytes": -1}
        engines = {m: build_engine(_settings(args.data_dir, log_dir, m == "on", **sink)) for m in ("off", "on")}
        warm = _requests(BATCH, args.merchants, rng)
        for e in engines.values():
            e.score(warm)
        wall: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        unary: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(args.rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                batches = [_requests(BATCH, args.merchants, rng) for _ in range(args.batches)]
                w, c = _round(engines[mode], batches)
                wall[mode].append(w)
                cpu[mode].append(c)
                unary[mode].append(_unary_p50(engines[mode], [_requests(1, args.merchants, rng) for _ in range(200)]))
        for e in engines.values():
            e.close()
    n = args.batches * BATCH
    print(f"engine batch scoring, batches of {BATCH}, {args.batches} batches per round, {args.rounds} rounds each; "
          f"log sink {args.sink}")
    print("mode  decisions/s (median round)  CPU us/decision  unary p50 ms")
    for mode in ("off", "on"):
        print(f"{mode:<5} {n / statistics.median(wall[mode]):>26,.0f}  {statistics.median(cpu[mode]) / n * 1e6:>15.2f}"
              f"  {statistics.median(unary[mode]) * 1e3:>12.3f}")
    loss = 1 - statistics.median(wall["off"]) / statistics.median(wall["on"])
    print(f"throughput cost of the log: {loss:.1%}; unary p50 +"
          f"{(statistics.median(unary['on']) - statistics.median(unary['off'])) * 1e3:.3f} ms")


# --- sinks ----------------------------------------------------------------------------


def _sample_table(rng: np.random.Generator) -> pa.Table:
    """512 logged decisions, as the writer makes them (real layout, synthetic values)."""
    from services.decisionlog.privacy import IdHasher
    from services.decisionlog.schema import to_table

    return to_table([_sample_entry(rng)], IdHasher(b"k" * 32), "bench", 0)


def _sample_entry(rng: np.random.Generator) -> Any:
    from services.decisionlog.schema import Entry

    req, answer, replay, fresh, feats = _sample_append(rng)
    return Entry(req, answer.rows, replay, fresh, feats.matrix, feats.event_ts, None,
                 feats.tag_words(), answer.reason_table, answer.stage_s, time.time())


def _sample_append(rng: np.random.Generator) -> tuple[Any, Any, Any, Any, Any]:
    """What the engine hands ``DecisionLog.append`` for a batch of 512 (synthetic values)."""
    from features import FeatureBatch
    from features.catalog import MATRIX_COLUMNS
    from services.schema.records import DecisionBatch, blank_decisions

    req = _requests(BATCH, 3000, rng).rows
    rows = blank_decisions(BATCH)
    rows["decision_id"] = [f"d-{i}".encode() for i in range(BATCH)]
    rows["pd"] = rng.random(BATCH)
    rows["reason"][:, :4] = rng.integers(0, 20, (BATCH, 4))
    feats = FeatureBatch(rng.random((BATCH, len(MATRIX_COLUMNS))).astype(np.float32), np.zeros((BATCH, 8), np.uint8),
                         np.ones(BATCH, bool), np.full(BATCH, 1_700_000_000, np.int64))
    table = tuple((f"R{i}", f"reason {i}") for i in range(20))
    rows["model_version"], rows["policy_version"], rows["risk_grade"] = b"lgbm-bench", b"policy-bench", b"C"
    answer = DecisionBatch(rows, table, "", {"kernel": 0.001})
    return req, answer, np.zeros(BATCH, bool), np.arange(BATCH), feats


def writer(args: argparse.Namespace) -> None:
    """CPU per decision of each step of the writer thread, on batches of 512 (best of 3)."""
    import pyarrow.parquet as pq

    from services.decisionlog.owned import read_ipc, write_ipc
    from services.decisionlog.privacy import IdHasher
    from services.decisionlog.schema import to_table
    from services.decisionlog.sinks.parquet import DICTIONARY, STATISTICS

    rng = np.random.default_rng(7)
    entries = [_sample_entry(rng) for _ in range(args.batches)]
    ids = IdHasher(b"k" * 32)
    n = BATCH * len(entries)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        table = to_table(entries, ids, "bench", 0)
        steps: dict[str, Callable[[], object]] = {
            "to Arrow (incl. keyed hashes)": lambda: to_table(entries, ids, "bench", 0),
            "  of which application-id hashes": lambda: ids.column(table["decision_id"].to_numpy(zero_copy_only=False)
                                                          .astype("S40")),
            "journal chunk (Arrow IPC)": lambda: write_ipc(d / "c.arrow", table, False),
            "roll: read chunk": lambda: read_ipc(d / "c.arrow"),
            "roll: Parquet (zstd)": lambda: pq.write_table(table, d / "s.parquet", compression="zstd",
                                                           use_dictionary=DICTIONARY, write_statistics=STATISTICS),
        }
        print(f"writer thread, {len(entries)} batches of {BATCH} per flush; CPU us per decision (best of 3)")
        total = 0.0
        for name, step in steps.items():
            best = min(_cpu(step) for _ in range(3))
            total += 0 if name.startswith("  ") else best
            print(f"{name:<32} {best / n * 1e6:6.2f}")
        print(f"{'total':<32} {total / n * 1e6:6.2f}   ({(d / 's.parquet').stat().st_size / n:.0f} bytes/decision)")


def _cpu(step: Callable[[], object]) -> float:
    c0 = time.process_time()
    step()
    return time.process_time() - c0


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


@contextmanager
def _nats(url: str) -> Iterator[Callable[[bytes], None]]:
    import nats

    loop = asyncio.new_event_loop()
    nc = loop.run_until_complete(nats.connect(url))
    js = nc.jetstream()
    stream = f"bench_decisions_{uuid.uuid4().hex[:6]}"
    loop.run_until_complete(js.add_stream(name=stream, subjects=[f"{stream}.>"], storage="file"))

    def append(payload: bytes) -> None:
        loop.run_until_complete(js.publish(f"{stream}.r1", payload))  # returns once the stream acked

    try:
        yield append
    finally:
        loop.run_until_complete(js.delete_stream(stream))
        loop.run_until_complete(nc.close())
        loop.close()


def _flat(table: pa.Table) -> pa.Table:
    """The table as COPY takes it: lists as text (reasons "A;B"), keyed hashes as hex."""
    import pyarrow.compute as pc

    cols = {}
    for name in table.schema.names:
        col, t = table[name], table.schema.field(name).type
        if pa.types.is_list(t):
            col = pc.binary_join(pc.cast(col, pa.list_(pa.string())), ";")
        elif pa.types.is_fixed_size_binary(t):
            col = pa.array([v.hex() for v in col.to_pylist()])  # 2 columns, one call each per batch
        cols[name] = col
    return pa.table(cols)


@contextmanager
def _postgres(dsn: str, table: pa.Table) -> Iterator[Callable[[pa.Table], None]]:
    import psycopg
    import pyarrow.csv as pacsv

    conn = psycopg.connect(dsn)
    name = f"bench_decisions_{uuid.uuid4().hex[:6]}"
    flat = _flat(table)
    typed = ", ".join(f'"{c}" {_pg_type(flat.schema.field(c).type)}' for c in flat.schema.names)
    conn.execute(f"CREATE TABLE {name} ({typed})")
    conn.commit()
    copy_sql = f"COPY {name} FROM STDIN WITH (FORMAT csv, HEADER false)"

    def append(batch: pa.Table) -> None:
        buf = pa.BufferOutputStream()
        pacsv.write_csv(_flat(batch), buf, pacsv.WriteOptions(include_header=False))
        with conn.cursor() as cur, cur.copy(copy_sql) as cp:
            cp.write(buf.getvalue().to_pybytes())
        conn.commit()  # durable once committed (synchronous_commit as configured)

    try:
        yield append
    finally:
        conn.execute(f"DROP TABLE {name}")
        conn.commit()
        conn.close()


def _pg_type(t: pa.DataType) -> str:
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_unsigned_integer(t):
        return "numeric"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_timestamp(t):
        return "timestamptz"
    return "text"


def _server_cpu(port: int) -> Callable[[], float]:
    """CPU seconds so far of the server listening on ``port`` and its children (PostgreSQL's
    backends and WAL writer); 0 if it cannot be seen from here."""
    import psutil

    pids = [c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port and c.pid]

    def total() -> float:
        cpu = 0.0
        for pid in set(pids):
            try:
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    t = p.cpu_times()
                    cpu += t.user + t.system
            except psutil.Error:
                continue
        return cpu

    return total


def _timed(append: Callable[[], None], out: dict[str, list[float]]) -> None:
    c0, t0 = time.process_time(), time.perf_counter()
    append()
    out["wall"].append(time.perf_counter() - t0)
    out["client_cpu"].append(time.process_time() - c0)


def sinks(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(7)
    table = _sample_table(rng)
    payload = _ipc_bytes(table)
    print(f"one batch: {BATCH} decisions, {table.num_columns} columns, {len(payload):,} bytes as Arrow IPC")
    figures: dict[str, dict[str, list[float]]] = {k: {"wall": [], "client_cpu": []} for k in ("nats", "postgres")}
    server = {"nats": _server_cpu(args.nats_port), "postgres": _server_cpu(args.postgres_port)}
    with _nats(args.nats) as nats_append, _postgres(args.postgres, table) as pg_append:
        for _ in range(5):  # warm both
            nats_append(payload)
            pg_append(table)
        # Server CPU over the whole run (its clock ticks are 10 ms: too coarse per append);
        # each server works only during its own appends, which are interleaved.
        before = {k: f() for k, f in server.items()}
        for _ in range(args.appends):
            # The conversion each sink needs (IPC bytes, CSV text) is inside its time.
            _timed(lambda: nats_append(_ipc_bytes(table)), figures["nats"])
            _timed(lambda: pg_append(table), figures["postgres"])
        server_s = {k: f() - before[k] for k, f in server.items()}
    print(f"{args.appends} appends of {BATCH} each, interleaved")
    print("sink        decisions/s   p50 ms   p99 ms   client CPU us/decision   server CPU us/decision")
    for name, f in figures.items():
        p50, p99 = np.percentile(f["wall"], [50, 99])
        n = BATCH * len(f["wall"])
        print(f"{name:<10} {n / sum(f['wall']):>12,.0f}  {p50 * 1e3:>7.2f}  {p99 * 1e3:>7.2f}"
              f"  {sum(f['client_cpu']) / n * 1e6:>23.2f}  {server_s[name] / n * 1e6:>23.2f}")


# --- the log through each sink -----------------------------------------------------------


def _through(settings: Any, data_dir: Path, appends: list[tuple[Any, ...]], n: int, *, rate: float,
             server: Callable[[], float]) -> dict[str, float]:
    """``n`` batches appended at ``rate`` decisions/s (0: as fast as the hot path allows);
    timed until the last is durable (written by the sink and the log closed: the Parquet
    sink's last roll included)."""
    from services.decisionlog.writer import open_log

    log = open_log(settings, data_dir)
    assert log is not None
    log.append(*appends[0])  # warm: a connection made, the journal opened
    log.flush_soon()
    if not log.wait_until(lambda: log.stats.logged_rows == log.stats.appended_rows, 30.0):
        raise RuntimeError(f"the {settings.sink} sink took nothing within 30 s")
    spent = []
    missed = log.stats.spooled_rows + log.stats.unlogged_rows  # the warm-up's, if it came before the connection
    w0, c0, s0 = time.perf_counter(), time.process_time(), server()
    pace = threading.Event()
    for i in range(n):
        if rate:
            pace.wait(max(0.0, w0 + i * BATCH / rate - time.perf_counter()))
        t0 = time.perf_counter()
        log.append(*appends[i % len(appends)])
        spent.append(time.perf_counter() - t0)
    log.flush_soon()
    if not log.wait_until(lambda: log.stats.logged_rows == log.stats.appended_rows, 300.0):
        raise RuntimeError(f"the {settings.sink} sink did not keep up within 300 s")
    log.close()
    wall, cpu, srv = time.perf_counter() - w0, time.process_time() - c0, server() - s0
    if log.stats.spooled_rows + log.stats.unlogged_rows > missed:
        raise RuntimeError(f"the {settings.sink} sink failed during the run: {log.stats}")
    d = n * BATCH
    return {"rate": d / wall, "append_us": statistics.median(spent) / BATCH * 1e6,
            "append_p99_ms": float(np.percentile(spent, 99)) * 1e3,
            "cpu_us": cpu / d * 1e6, "server_us": srv / d * 1e6, "flushes": log.stats.flushes}


def nats_vs_parquet(args: argparse.Namespace) -> None:
    from services.decisionlog.compactor import Compactor
    from services.decisionlog.settings import DecisionLogSettings
    from services.decisionlog.sinks.nats import NatsOptions

    rng = np.random.default_rng(7)
    appends = [_sample_append(rng) for _ in range(8)]
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"BENCH_DECISIONS_{tag}", f"bench_decisions_{tag}"
    server = _server_cpu(args.nats_port)
    figures: dict[str, list[dict[str, float]]] = {"parquet": [], "nats": []}
    with tempfile.TemporaryDirectory() as tmp, _stream_deleted(args.nats, stream):
        root = Path(tmp)
        (root / "key").write_bytes(b"k" * 32)
        for r in range(args.rounds):
            for sink in ("parquet", "nats") if r % 2 == 0 else ("nats", "parquet"):
                d = root / f"{sink}-{r}"
                settings = DecisionLogSettings(
                    sink=sink, directory=d / "decisions", spool_directory=d / "spool", id_key_file=root / "key",
                    nats_url=args.nats, nats_stream=stream, nats_subject=subject, nats_max_bytes=-1,
                    nats_compression=args.compression,
                )
                measure = server if sink == "nats" else lambda: 0.0
                figures[sink].append(_through(settings, d, appends, args.batches, rate=args.rate, server=measure))
        opts = NatsOptions.from_settings(settings)
        compactor = Compactor(opts, root / "compacted", roll_interval_s=60.0, idle_s=0.2)  # a short idle tail
        w0, c0 = time.perf_counter(), time.process_time()
        asyncio.run(compactor.run(until_idle=True))
        cw, cc = time.perf_counter() - w0, time.process_time() - c0
    pace = f"at {args.rate:,.0f} decisions/s" if args.rate else "as fast as the hot path allows"
    print(f"the log through each sink: {args.rounds} rounds each, alternating; {args.batches} batches of {BATCH} "
          f"appended {pace}, timed until durable (median round)")
    print("sink      decisions/s  append us/decision  append p99 ms  process CPU us/decision  server CPU us/decision")
    for sink, rounds in figures.items():
        m = {k: statistics.median(f[k] for f in rounds) for k in rounds[0]}
        print(f"{sink:<8} {m['rate']:>12,.0f}  {m['append_us']:>18.3f}  {m['append_p99_ms']:>13.3f}"
              f"  {m['cpu_us']:>23.2f}  {m['server_us']:>22.2f}")
    rows = compactor.stats.rows
    print(f"compactor: {compactor.stats.messages:,} messages, {rows:,} decisions into {compactor.stats.files} files "
          f"in {cw:.2f} s ({rows / cw:,.0f} decisions/s), CPU {cc / rows * 1e6:.2f} us/decision; "
          f"{compactor.stats.duplicate_rows} duplicates")


@contextmanager
def _stream_deleted(url: str, name: str) -> Iterator[None]:
    """The benchmark's stream is deleted afterwards, whatever happened (if it was made)."""
    try:
        yield
    finally:
        import nats
        from nats.js.errors import NotFoundError

        async def delete() -> None:
            nc = await nats.connect(url)
            try:
                await nc.jetstream().delete_stream(name)
            except NotFoundError:
                pass
            finally:
                await nc.close()

        asyncio.run(delete())


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m services.decisionlog.bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cost", help="log on vs off on engine batch scoring")
    c.add_argument("--data-dir", type=Path, required=True, help="a world: data, features, a trained model")
    c.add_argument("--merchants", type=int, default=3000, help="merchant ids M00000000.. to draw from")
    c.add_argument("--batches", type=int, default=40, help="batches of 512 per round")
    c.add_argument("--rounds", type=int, default=5, help="rounds per mode, alternating")
    c.add_argument("--sink", choices=["parquet", "nats"], default="parquet", help="the log's sink (default parquet)")
    c.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server (with --sink nats)")
    c.set_defaults(run=cost)
    w = sub.add_parser("writer", help="CPU per decision of each step of the writer thread")
    w.add_argument("--batches", type=int, default=40, help="batches of 512 per flush")
    w.set_defaults(run=writer)
    s = sub.add_parser("sinks", help="NATS JetStream vs PostgreSQL, batches of 512")
    s.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server")
    s.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres", help="PostgreSQL DSN")
    s.add_argument("--appends", type=int, default=200, help="batches appended per sink")
    s.add_argument("--nats-port", type=int, default=4222, help="port of the NATS server, to read its CPU")
    s.add_argument("--postgres-port", type=int, default=5432, help="port of PostgreSQL, to read its CPU")
    s.set_defaults(run=sinks)
    t = sub.add_parser("nats-vs-parquet", help="the whole log through the NATS sink and the Parquet sink, one run")
    t.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server")
    t.add_argument("--nats-port", type=int, default=4222, help="port of the NATS server, to read its CPU")
    t.add_argument("--batches", type=int, default=200, help="batches of 512 per round")
    t.add_argument("--rounds", type=int, default=3, help="rounds per sink, alternating")
    t.add_argument("--rate", type=float, default=0.0, help="decisions/s appended (default 0: as fast as possible)")
    t.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none",
                   help="Arrow IPC compression of the NATS messages")
    t.set_defaults(run=nats_vs_parquet)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
