"""``python -m features.stores.packed.bench``: the packed layout against Feast's standard one.

One run, on a redis-server of its own (a free loopback port, stopped at the end; so no
other client's work lands in its CPU counters), over a population generated for it:

- redis-server CPU per merchant read (every merchant's velocity recorded first, so its
  window state is as large as in production) (``INFO cpu`` before and after each block of reads),
  standard reader vs packed reader, blocks alternating A B A B, for unary reads and
  batches of 100;
- a batched read of 1,000 merchants: our packed reader, our standard reader and the Feast
  SDK's ``get_online_features`` (on the standard layout, and on the packed store), call by
  call in turn;
- materialization: ``feast materialize`` (standard layout) against our materializer on
  the packed layout, each into a fresh project, alternating, every run checked.

Every read engine must return the same features (checked before timing). Pass
``--redis-url`` to measure another server instead (its CPU then counts everyone's work).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from features import catalog
from features.settings import FeatureSettings
from features.stores import open_backend

AS_OF_DAYS_AGO = 30
REFS = [f"{v.name}:{f}" for v in catalog.ALL_VIEWS for f in v.field_names]


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    """A redis-server without persistence on a free loopback port, for this run only."""
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # it logs this line once it listens
            if "Ready to accept connections" in line:
                break
        else:
            raise SystemExit(f"redis-server exited with {proc.wait()}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _window(as_of: Any) -> tuple[Any, Any]:
    import datetime as dt

    ts = dt.datetime.combine(as_of, dt.time(), tzinfo=dt.timezone.utc)
    return ts - dt.timedelta(days=1), ts + dt.timedelta(seconds=1)


class Bench:
    """The population, the projects built from it, and the server they live on."""

    def __init__(self, root: Path, url: str, merchants: int) -> None:
        import datetime as dt

        from features.population import build_offline_tables, generate_population

        self.root, self.url, self.merchants = root, url, merchants
        self.as_of = dt.date.today() - dt.timedelta(days=AS_OF_DAYS_AGO)
        generate_population(root / "data", merchants=merchants, seed=7, as_of=self.as_of)
        build_offline_tables(root / "data", self.as_of)

    def project(self, layout: str, name: str) -> FeatureSettings:
        """A fresh, applied (not yet materialized) project of ``layout``."""
        from features.feast_repo import apply

        pid = f"{name}{uuid.uuid4().hex[:6]}"
        root = self.root / pid
        for sub in ("raw", "offline"):
            shutil.copytree(self.root / "data" / sub, root / sub)
        settings = FeatureSettings.model_validate({
            "data_dir": root, "online_store": "redis", "redis_url": self.url, "project": pid,
            "redis_layout": layout, "max_feature_age_s": 3650 * 86400.0,
            "timeout_s": 10.0,  # a shared, loaded machine: a slow round trip is not a failure here
        })
        apply(settings)
        return settings

    def materialized(self, layout: str, name: str) -> FeatureSettings:
        from features.materialize import materialize

        settings = self.project(layout, name)
        materialize(settings, *_window(self.as_of))
        return settings

    def with_velocity(self, settings: FeatureSettings, now_s: float) -> None:
        """Every merchant's velocity recorded once, as in production (641-byte window state)."""
        recorder = open_backend(settings).velocity()
        ids = [f"M{i:08d}" for i in range(self.merchants)]
        for a in range(0, len(ids), 1000):
            recorder.record(ids[a : a + 1000], now_s=now_s)

    def ids(self, rng: np.random.Generator, n: int) -> list[str]:
        return [f"M{i:08d}" for i in rng.integers(0, self.merchants, n)]


def _same(a: Any, b: Any) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=f == "matrix")
               for f in ("matrix", "tags", "found", "event_ts", "view_ts"))


def server_cpu(bench: Bench, standard: FeatureSettings, packed: FeatureSettings,
               seconds: float) -> list[tuple[str, str, float]]:
    """µs of redis-server CPU per merchant read, per reader and batch size (blocks alternate)."""
    readers = {"standard": open_backend(standard).reader(), "packed": open_backend(packed).reader()}
    probe = open_backend(standard)
    rng = np.random.default_rng(1)
    rows = []
    for batch in (1, 100):
        calls = max(1, 20_000 // batch)  # a block: ~20,000 merchants
        cpu = {k: 0.0 for k in readers}
        merchants = {k: 0 for k in readers}
        deadline = time.perf_counter() + seconds
        turn = 0
        while time.perf_counter() < deadline or turn < 4:
            order = list(readers) if turn % 2 == 0 else list(readers)[::-1]
            turn += 1
            for name in order:
                batches = [bench.ids(rng, batch) for _ in range(calls)]
                before = probe.server_cpu_s()
                for ids in batches:
                    readers[name].read(ids)
                cpu[name] += probe.server_cpu_s() - before
                merchants[name] += calls * batch
        rows += [(f"read {batch}", name, cpu[name] / merchants[name] * 1e6) for name in readers]
    return rows


def batched_reads(bench: Bench, standard: FeatureSettings, packed: FeatureSettings,
                  rounds: int, size: int = 1000) -> dict[str, float]:
    """Median ms of one batched read of ``size`` merchants per engine, engines in turn."""
    from features.feast_repo import open_store

    sdk_standard, sdk_packed = open_store(standard), open_store(packed)

    def sdk(store: Any) -> Callable[[list[str]], object]:
        return lambda ids: store.get_online_features(
            features=REFS, entity_rows=[{catalog.JOIN_KEY: m} for m in ids]).to_dict()

    engines: dict[str, Callable[[list[str]], object]] = {
        "packed reader": open_backend(packed).reader().read,
        "standard reader": open_backend(standard).reader().read,
        "Feast SDK, standard layout": sdk(sdk_standard),
        "Feast SDK, packed store": sdk(sdk_packed),
    }
    rng = np.random.default_rng(2)
    probe = bench.ids(rng, size)
    if not _same(engines["packed reader"](probe), engines["standard reader"](probe)):
        raise AssertionError("packed and standard readers disagree")
    if engines["Feast SDK, standard layout"](probe) != engines["Feast SDK, packed store"](probe):
        raise AssertionError("the Feast SDK reads the two layouts differently")
    times: dict[str, list[float]] = {k: [] for k in engines}
    for turn in range(rounds):
        order = list(engines) if turn % 2 == 0 else list(engines)[::-1]
        for name in order:
            ids = bench.ids(rng, size)
            t0 = time.perf_counter()
            engines[name](ids)
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def materializations(bench: Bench, rounds: int) -> dict[str, list[float]]:
    """Seconds of ``feast materialize`` (standard layout) and of ours (packed), alternating."""
    from features.materialize import materialize, materialize_with_feast

    out: dict[str, list[float]] = {"feast materialize, standard layout": [], "ours, packed layout": []}
    for turn in range(rounds):
        order = list(out) if turn % 2 == 0 else list(out)[::-1]
        for name in order:
            if name.startswith("feast"):
                settings = bench.project("standard", "bfeast")
                seconds = materialize_with_feast(settings, *_window(bench.as_of))
            else:
                settings = bench.project("packed", "bours")
                seconds = materialize(settings, *_window(bench.as_of)).seconds
            check = open_backend(settings).reader().read(["M00000000"])
            if not check.found[0]:
                raise AssertionError(f"{name} left M00000000 unwritten")
            out[name].append(seconds)
            open_backend(settings).drop_project()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--merchants", type=int, default=20_000, help="population read from (default 20,000)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per engine and batch size, CPU blocks")
    p.add_argument("--rounds", type=int, default=20, help="batched reads of 1,000 per engine")
    p.add_argument("--materialize-rounds", type=int, default=2, help="materializations per engine")
    p.add_argument("--redis-url", help="measure this server instead of starting one")
    p.add_argument("--parts", default="cpu,reads,materialize", help="which measurements (comma-separated)")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(own_redis())
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="packed-bench-")))
        run(Bench(root, url, args.merchants), args)


def run(bench: Bench, args: argparse.Namespace) -> None:
    standard = bench.materialized("standard", "bstd")
    packed = bench.materialized("packed", "bpk")
    now = time.time()
    for settings in (standard, packed):
        bench.with_velocity(settings, now)
    try:
        print(f"{bench.merchants:,} merchants, redis {bench.url}")
        parts = set(args.parts.split(","))
        if "cpu" in parts:
            _print_cpu(server_cpu(bench, standard, packed, args.seconds))
        if "reads" in parts:
            _print_reads(batched_reads(bench, standard, packed, args.rounds))
        if "materialize" in parts:
            _print_materializations(bench.merchants, materializations(bench, args.materialize_rounds))
    finally:
        for settings in (standard, packed):
            open_backend(settings).drop_project()


def _print_cpu(cpu: list[tuple[str, str, float]]) -> None:
    print("\nredis-server CPU per merchant read (µs)")
    by = {(c, e): v for c, e, v in cpu}
    for case in sorted({c for c, _, _ in cpu}, key=lambda c: int(c.split()[1])):
        s, k = by[(case, "standard")], by[(case, "packed")]
        print(f"  {case:<10} standard {s:6.2f}   packed {k:6.2f}   standard/packed {s / k:5.1f}x")


def _print_reads(reads: dict[str, float]) -> None:
    base = reads["Feast SDK, standard layout"]
    print("\nbatched read of 1,000 merchants (median ms)")
    for name, ms in reads.items():
        print(f"  {name:<28}{ms:9.2f}   vs Feast SDK standard {base / ms:7.1f}x")


def _print_materializations(merchants: int, mats: dict[str, list[float]]) -> None:
    feast, ours = (float(np.median(v)) for v in mats.values())
    print(f"\nmaterialization of {merchants:,} merchants, all views (median s)")
    for name, v in mats.items():
        print(f"  {name:<36}{float(np.median(v)):8.2f}   runs {', '.join(f'{x:.2f}' for x in v)}")
    print(f"  ours / feast speed-up {feast / ours:.1f}x")


if __name__ == "__main__":
    main()
