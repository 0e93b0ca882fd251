"""``python -m features.bench``: our feature layer against the Feast SDK, side by side.

    python -m features.bench                       # reads + materialization, both stores
    python -m features.bench --stores redis --merchants 20000
    python -m features.bench scale --merchants 1000000 --data-dir /tmp/pop1m
    python -m features.bench clients --merchants 5000   # our RESP client vs redis-py + hiredis

``compare`` (the default) builds one synthetic world, then per store:

- reads: our batched reader and ``FeatureStore.get_online_features`` for the same random
  merchants, 1 / 100 / 1,000 per call, every feature the reader returns (~100 numbers,
  the tag bitset, timestamps); calls alternate between the two so both see the same
  machine noise; rows/s, p50, p99;
- writes: ``feast materialize`` and our bulk materializer into fresh online stores from
  the same offline tables; entity rows/s (a row = one merchant in one feature view);
- velocity: ``VelocityRecorder.record`` against ``FeatureStore.push`` for a batch.

``scale`` times the bulk materializer alone on a big population into Redis (the
"1M merchants within 60 s" check) and removes what it wrote.

``clients`` materializes a small world into Redis and times the Redis work of a replica
(batched reads, the velocity script, idempotency lookup and save) on the project's RESP
client and on redis-py with hiredis, interleaved (``features.stores.redis.bench``).

Every store-specific step (server CPU, cleanup) goes through the store backend.

The runtime never imports this module.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features import catalog
from features.settings import FeatureSettings

AS_OF = dt.date(2026, 11, 1)
_TS = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
WINDOW = (_TS - dt.timedelta(days=1), _TS + dt.timedelta(seconds=1))


@dataclass
class Row:
    store: str
    case: str
    engine: str
    rows_per_s: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")


def _settings(root: Path, store: str, project: str) -> FeatureSettings:
    # A fresh project per run on every store: a shared Redis keeps runs (and their cleanup) apart.
    return FeatureSettings(data_dir=root, online_store=store, project=project, max_feature_age_s=1e9)


def _world(root: Path, merchants: int) -> None:
    from features.population import build_offline_tables, generate_population

    if (root / "offline" / "merchant_tags.parquet").exists():
        return
    t0 = time.perf_counter()
    generate_population(root, merchants=merchants, seed=7, as_of=AS_OF)
    build_offline_tables(root, AS_OF)
    print(f"# world: {merchants:,} merchants in {time.perf_counter() - t0:.1f} s", flush=True)


def _fresh_copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "offline", dst / "offline")
    return dst


def _drop(s: FeatureSettings) -> None:
    from features.stores import open_backend

    open_backend(s).drop_project()


def _latency(calls: list[float]) -> tuple[float, float]:
    a = np.asarray(calls) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_reads(s: FeatureSettings, merchants: int, sizes: list[int], seconds: float) -> list[Row]:
    from features.feast_repo import open_store
    from features.stores import open_backend

    reader = open_backend(s).reader()
    store = open_store(s)
    refs = [f"{v.name}:{f}" for v in catalog.ALL_VIEWS for f in v.field_names if f != "window_state"]
    rng = np.random.default_rng(1)
    ids = [f"M{i:08d}" for i in range(merchants)]
    rows: list[Row] = []
    for n in sizes:

        def pick(n: int = n) -> list[str]:
            return [ids[i] for i in rng.integers(0, merchants, n)]

        ours: list[float] = []
        sdk: list[float] = []
        reader.read(pick())  # warm: connection, statements
        store.get_online_features(features=refs, entity_rows=[{catalog.JOIN_KEY: m} for m in pick()])
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(sdk) < 3:
            # Alternate: ~as much wall time in each engine, so both share the same noise.
            t_block = time.perf_counter()
            while time.perf_counter() - t_block < max(sdk[-1] if sdk else 0.01, 0.002):
                batch = pick()
                t0 = time.perf_counter()
                reader.read(batch)
                ours.append(time.perf_counter() - t0)
            entity_rows = [{catalog.JOIN_KEY: m} for m in pick()]
            t0 = time.perf_counter()
            store.get_online_features(features=refs, entity_rows=entity_rows).to_dict()
            sdk.append(time.perf_counter() - t0)
        for engine, calls in (("ours", ours), ("feast sdk", sdk)):
            p50, p99 = _latency(calls)
            rows.append(Row(s.online_store, f"read {n}/call", engine, n * len(calls) / sum(calls), p50, p99))
    reader.close()
    return rows


def bench_materialize(src: Path, work: Path, store: str) -> list[Row]:
    from features.feast_repo import apply
    from features.materialize import materialize, materialize_with_feast

    out = []
    for engine in ("feast materialize", "ours"):
        project = f"cabench{uuid.uuid4().hex[:8]}"
        s = _settings(_fresh_copy(src, work / engine.replace(" ", "_")), store, project)
        apply(s)
        try:
            if engine == "ours":
                report = materialize(s, *WINDOW)
                secs, entity_rows = report.seconds, report.entities
            else:
                secs = materialize_with_feast(s, *WINDOW)
                entity_rows = sum(_rows(s, v) for v in catalog.ALL_VIEWS)
            out.append(Row(store, "materialize", engine, entity_rows / secs))
            print(f"# {store} {engine}: {entity_rows:,} entity rows in {secs:.1f} s", flush=True)
        finally:
            _drop(s)
    return out


def _rows(s: FeatureSettings, view: catalog.FeatureView) -> int:
    import polars as pl

    return int(pl.scan_parquet(s.offline_dir / f"{view.name}.parquet").select(pl.len()).collect().item())


def bench_velocity(s: FeatureSettings, merchants: int, n: int, seconds: float) -> list[Row]:
    import pandas as pd

    from features.feast_repo import open_store
    from features.stores import open_backend
    from features.velocity import WindowState

    rec = open_backend(s).velocity()
    store = open_store(s)
    rng = np.random.default_rng(2)
    ids = [f"M{i:08d}" for i in range(merchants)]
    ours: list[float] = []
    push: list[float] = []
    now = time.time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(push) < 3:
        batch = [ids[i] for i in rng.integers(0, merchants, n)]
        t0 = time.perf_counter()
        rec.record(batch, now)
        ours.append(time.perf_counter() - t0)
        # What a push-based recorder would at least do: push precomputed values (it would
        # also have to read the current state first; that read is not timed here).
        state = WindowState.fresh(int(now * 1e6)).value()
        ts = pd.Timestamp(int(now * 1e6), unit="us", tz="UTC")
        df = pd.DataFrame({catalog.JOIN_KEY: batch, "event_timestamp": ts, "created_timestamp": ts,
                           "apps_1h": 1, "apps_24h": 1, "window_state": [state] * n})
        t0 = time.perf_counter()
        store.push("merchant_velocity_push", df)
        push.append(time.perf_counter() - t0)
    rec.close()
    out = []
    for engine, calls in (("ours", ours), ("feast push", push)):
        p50, p99 = _latency(calls)
        out.append(Row(s.online_store, f"velocity {n}/call", engine, n * len(calls) / sum(calls), p50, p99))
    return out


def _print(rows: list[Row]) -> None:
    print(f"\n{'store':<7}{'case':<18}{'engine':<19}{'rows/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'ours/feast':>12}")
    base: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.engine != "ours":
            base[(r.store, r.case)] = r.rows_per_s
    for r in rows:
        ratio = ""
        if r.engine == "ours" and (r.store, r.case) in base:
            ratio = f"{r.rows_per_s / base[(r.store, r.case)]:.1f}x"
        print(f"{r.store:<7}{r.case:<18}{r.engine:<19}{r.rows_per_s:>12,.0f}"
              f"{r.p50_ms:>10.3f}{r.p99_ms:>10.3f}{ratio:>12}".replace("nan", "  -"))


def compare(args: argparse.Namespace) -> None:
    from features.feast_repo import apply
    from features.materialize import materialize

    root = args.data_dir or Path(tempfile.mkdtemp(prefix="features-bench-"))
    _world(root, args.merchants)
    mat_root = root / "mat_world"
    _world(mat_root, args.mat_merchants)
    rows: list[Row] = []
    for store in args.stores:
        project = f"cabench{uuid.uuid4().hex[:8]}"
        s = _settings(_fresh_copy(root, root / f"read_{store}"), store, project)
        apply(s)
        try:
            materialize(s, *WINDOW)
            rows += bench_reads(s, args.merchants, args.sizes, args.seconds)
            rows += bench_velocity(s, args.merchants, 100, args.seconds / 2)
        finally:
            _drop(s)
        rows += bench_materialize(mat_root, root / f"mat_{store}", store)
    print(f"\n# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}; "
          f"reads over {args.merchants:,} merchants, materialize of {args.mat_merchants:,} "
          f"merchants ({len(catalog.MATRIX_COLUMNS)} numbers + tag bitset per merchant)")
    _print(rows)
    if args.data_dir is None:
        shutil.rmtree(root, ignore_errors=True)


def scale(args: argparse.Namespace) -> None:
    from features.feast_repo import apply
    from features.materialize import materialize
    from features.population.__main__ import peak_rss_mib
    from features.stores import open_backend

    if args.data_dir is None:
        raise SystemExit("scale needs --data-dir with a generated population (python -m features.population)")
    project = f"cascale{uuid.uuid4().hex[:8]}"
    s = _settings(args.data_dir, args.stores[0], project)
    open_backend(s).drop_project()  # start from an empty online store
    apply(s)

    backend = open_backend(s)
    try:
        cpu0, proc0 = backend.server_cpu_s(), time.process_time()
        report = materialize(s, *WINDOW, dedup=not args.skip_dedup)
        cpu, proc = backend.server_cpu_s() - cpu0, time.process_time() - proc0
        print(f"bulk materialize into {s.online_store}: {report.entities:,} entity rows, "
              f"{report.values:,} values in {report.seconds:.1f} s "
              f"({report.entities / report.seconds:,.0f} rows/s), peak RSS {peak_rss_mib():,.0f} MiB, "
              f"CPU: this process {proc:.1f} s" + (f", {s.online_store} server {cpu:.1f} s" if cpu else ""))
        print(f"{s.online_store} store memory: {backend.server_memory_bytes() / 2**30:.2f} GiB")
    finally:
        if not args.keep:
            backend.drop_project()


def clients(args: argparse.Namespace) -> None:
    """Our RESP client against redis-py + hiredis on a replica's Redis work (Redis only, by nature)."""
    from importlib.metadata import version

    from features.feast_repo import apply
    from features.materialize import materialize
    from features.stores import open_backend
    from features.stores.redis.bench import compare_clients, parser_name, print_rows

    root = args.data_dir or Path(tempfile.mkdtemp(prefix="features-bench-"))
    _world(root, args.merchants)
    s = _settings(_fresh_copy(root, root / "read_clients"), "redis", f"cabench{uuid.uuid4().hex[:8]}")
    apply(s)
    try:
        materialize(s, *WINDOW)
        rows = compare_clients(s, args.merchants, args.seconds, args.sizes)
    finally:
        open_backend(s).drop_project()
    print(f"\n# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"redis-py {version('redis')} ({parser_name()}), hiredis {version('hiredis')}; "
          f"{args.merchants:,} merchants, {args.seconds:g} s per case, calls interleaved")
    print_rows(rows)
    if args.data_dir is None:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m features.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=["compare", "scale", "clients"], default="compare")
    p.add_argument("--merchants", type=int, default=20_000, help="population the reads draw from")
    p.add_argument("--mat-merchants", type=int, default=10_000, help="population both materializers write")
    p.add_argument("--stores", type=lambda v: v.split(","), default=["sqlite", "redis"])
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 100, 1000])
    p.add_argument("--seconds", type=float, default=8.0, help="wall time per read case (clients: per case)")
    p.add_argument("--data-dir", type=Path, default=None, help="reuse/keep a world here")
    p.add_argument("--skip-dedup", action="store_true", help="scale: Feast's skip_dedup semantics")
    p.add_argument("--keep", action="store_true", help="scale: leave the data in Redis")
    args = p.parse_args(argv)
    modes: dict[str, Callable[[argparse.Namespace], None]] = {"compare": compare, "scale": scale, "clients": clients}
    modes[args.mode](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
