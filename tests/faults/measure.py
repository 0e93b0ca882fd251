"""Measure the store-fault scenarios and print the table in docs/reliability.md.

    .venv/bin/python -m tests.faults.measure [--world DIR] [--seconds 5] [--size 20]

Builds (or reuses) the small test world, starts a private redis-server on a free port
(never 6379), materializes the world into it, and runs each fault through a ``FaultProxy``
against the engine a replica builds: how each batch was answered, how long it took, and
how long recovery took once the fault was lifted.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.schema.codes import Code
from services.scoring import ScoringEngine
from tests.conftest import AS_OF, World, _window, build_world
from tests.faults.proxy import FaultProxy, wait_until
from tests.faults.support import TIMEOUT_S, RedisWorld, batch, engine_through, free_port
from tests.support import redis_pings


@dataclass
class Row:
    fault: str
    config: str
    batches: int = 0
    late: int = 0  # answered after the deadline
    outcomes: Counter[str] | None = None
    first_s: float = 0.0
    times: list[float] | None = None
    probes: int = 0
    recovery_s: float = float("nan")

    def line(self) -> str:
        t = sorted(self.times or [0.0])
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted((self.outcomes or Counter()).items()))
        return (f"| {self.fault} | {self.config} | {self.batches} | {self.late} | {outcomes} | "
                f"{self.first_s * 1000:.0f} | {statistics.median(t) * 1000:.1f} / {t[-1] * 1000:.0f} | "
                f"{self.probes} | {self.recovery_s:.2f} |")


def _outcome(engine: ScoringEngine, size: int, row: Row) -> float:
    b = batch(size)
    t0 = time.monotonic()
    out = engine.score(b)
    elapsed = time.monotonic() - t0
    row.late += int(time.time() > float(b.deadline.min()))
    assert row.outcomes is not None
    for status, degraded in zip(out.status.tolist(), out["degraded"].tolist(), strict=True):
        row.outcomes[Code(status).name + (" degraded" if degraded and status == Code.OK else "")] += 1
    return elapsed


def _healthy(engine: ScoringEngine) -> bool:
    out = engine.score(batch(5))
    return bool((out.status == Code.OK).all() and not out["degraded"].any())


def scenario(rw: RedisWorld, fault: str, config: str, breaking: Callable[[FaultProxy], None], *,
             seconds: float, size: int, window_s: float = 900, start_broken: bool = False,
             features: dict[str, object] | None = None) -> Row:
    proxy = FaultProxy(rw.redis_port).start()
    row = Row(fault, config, outcomes=Counter(), times=[])
    try:
        if start_broken:
            breaking(proxy)
        engine, backend = engine_through(rw, proxy.port, window_s=window_s, settings=features)
        if not start_broken:
            assert _healthy(engine)
            breaking(proxy)
        row.first_s = _outcome(engine, size, row)
        assert row.times is not None
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:  # batches back to back, as a busy replica gets them
            row.times.append(_outcome(engine, size, row))
        row.batches = 1 + len(row.times)
        row.probes = backend.client.breaker.stats().probes
        proxy.pass_through()
        t0 = time.monotonic()
        wait_until(lambda: _healthy(engine), "recovery", timeout_s=30)
        row.recovery_s = time.monotonic() - t0
        engine.close()
    finally:
        proxy.close()
    return row


def _redis(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, help="a world built before (else one is built in a temp dir)")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long each fault lasts")
    ap.add_argument("--size", type=int, default=20, help="requests per batch")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the faults log warnings by design: keep the table readable
    tmp = Path(tempfile.mkdtemp(prefix="faults-"))
    world = World(args.world, AS_OF, _model_version(args.world)) if args.world else build_world(tmp / "world")
    proc, port = _redis(tmp)
    try:
        from features.feast_repo import apply
        from features.materialize import materialize

        root = tmp / "redis_world"
        for sub in ("raw", "offline", "models"):
            shutil.copytree(world.data_dir / sub, root / sub)
        rw = RedisWorld(world, root, f"measure{uuid.uuid4().hex[:8]}", port)
        wait_until(lambda: redis_pings(port), "redis-server")
        apply(rw.settings(port, timeout_s=5.0))
        materialize(rw.settings(port, timeout_s=5.0), *_window(AS_OF))
        nk = {"seconds": args.seconds, "size": args.size}
        rows = [
            scenario(rw, "Redis black-holed", "default policy", FaultProxy.black_hole, **nk),
            scenario(rw, "Redis black-holed", "idempotency off", FaultProxy.black_hole, window_s=0, **nk),
            scenario(rw, "Redis black-holed, no breaker (breaker_failures 1000)", "idempotency off",
                     FaultProxy.black_hole, window_s=0, features={"breaker_failures": 1000},
                     seconds=args.seconds, size=args.size),
            scenario(rw, "Redis resets connections", "default policy", FaultProxy.reset, **nk),
            scenario(rw, f"Redis slow ({TIMEOUT_S * 3:g} s > timeout)", "idempotency off",
                     lambda p: p.slow(TIMEOUT_S * 3), window_s=0, **nk),
            scenario(rw, "Redis flapping (0.15 s up / 0.15 s down)", "default policy",
                     lambda p: p.flap(0.15, 0.15), **nk),
            scenario(rw, "replica starts with Redis down", "default policy", FaultProxy.reset,
                     start_broken=True, **nk),
        ]
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"timeout_s {TIMEOUT_S}, breaker 3 failures, backoff 0.2-0.8 s, {args.size} requests per batch, "
          f"deadline 2 s, each fault {args.seconds:g} s")
    print("| fault | config | batches | late | items answered | first batch ms | later batches median / max ms "
          "| probes | recovery s |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(r.line())




def _model_version(world_dir: Path) -> str:
    from services.models import load_artifact

    return load_artifact(world_dir).version


if __name__ == "__main__":
    main()
