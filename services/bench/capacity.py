"""``creditauth bench capacity``: what each tier costs per decision, for the capacity plan.

On a 2-core box the front end, the replicas, Ray's own processes and the load
generator share the cores, so throughput alone cannot say how many cores each
tier needs at scale. Instead this runs a steady, bounded load at a rate the
stack sustains, and meters the CPU seconds every process of the stack spent
meanwhile (from /proc, via psutil), grouped by tier:

    front end   the `creditauth serve` process(es) (gRPC, validation, batching, encoding)
    replica     Serve replica actors (feature read, kernel, policy, idempotency, velocity)
    ray         GCS, raylet, Serve controller, agents (per-node overhead)
    store       the online-store server, when it is a separate process (Redis)

Decisions per CPU-second per tier is the per-core throughput the plan divides
410,000 decisions/s by. It is measured for unary traffic and for batch RPCs of
100, with 1 or 2 front-end processes and replicas to check that the cost per
decision stays flat as processes are added (the plan's scaling assumption).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

TIERS = ("frontend", "replica", "ray", "store")


def _tier(proc: psutil.Process, root_pids: set[int]) -> str | None:
    try:
        name = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if proc.pid in root_pids or "services.cli.main frontend" in name:
        return "frontend"
    if "ServeReplica" in name:
        return "replica"
    if "redis-server" in name:
        return "store"
    if "ray" in name or "gcs_server" in name or "raylet" in name:
        return "ray"
    return None


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


@dataclass(frozen=True)
class Measurement:
    mode: str
    frontends: int
    replicas: int
    decisions: int
    seconds: float
    cpu: dict[str, float]
    p99_ms: float
    errors: int

    def per_core(self) -> dict[str, float]:
        return {t: self.decisions / s for t, s in self.cpu.items() if s > 0}

    def row(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "frontends": self.frontends, "replicas": self.replicas,
            "decisions_per_s": round(self.decisions / self.seconds),
            "cpu_cores": {t: round(s / self.seconds, 3) for t, s in self.cpu.items()},
            "decisions_per_core_s": {t: round(v) for t, v in self.per_core().items()},
            "p99_ms": self.p99_ms, "errors": self.errors,
        }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def measure(args: argparse.Namespace, mode: str, frontends: int, replicas: int) -> Measurement:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "services.cli.main", "serve", "--data-dir", str(args.data_dir),
        "--port", str(port), "--frontends", str(frontends), "--replicas", str(replicas), "--plaintext",
    ]
    if args.online_store:
        cmd += ["--online-store", args.online_store]
    log = Path(args.log_dir) / f"capacity-{mode}-{frontends}x{replicas}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(log, server)
        time.sleep(5 if frontends > 1 else 2)
        stack = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        redis = [p for p in psutil.process_iter() if "redis-server" in " ".join(p.cmdline() or [])]
        procs = stack + redis
        tiers = {p.pid: _tier(p, {server.pid}) for p in procs}
        load = [
            sys.executable, "-m", "loadtest", "quick", "--target", f"127.0.0.1:{port}",
            "--data-dir", str(args.data_dir), "--concurrency", "64",
            "--requests", str(args.unary if mode == "unary" else 200),
            "--batch-calls", str(args.batch_calls if mode == "batch100" else 10),
            "--stream-requests", "0",
        ]
        before = _cpu(procs)
        t0 = time.perf_counter()
        out = subprocess.run(load, capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - t0
        after = _cpu(procs)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        run = next(r for r in json.loads(out.stdout)["runs"] if r["mode"] == mode)
        cpu = dict.fromkeys(TIERS, 0.0)
        for pid, t in after.items():
            tier = tiers.get(pid)
            if tier is not None:
                cpu[tier] += t - before.get(pid, t)
        # The quick run also warms up and runs the other modes briefly: scale CPU to the
        # measured mode's share of the wall time.
        share = run["seconds"] / seconds
        return Measurement(
            mode, frontends, replicas, run["decisions"], run["seconds"],
            {k: v * share for k, v in cpu.items()}, run["latency_ms"]["p99"], sum(run["errors"].values()),
        )
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(90)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _wait(log: Path, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while b"serving on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"stack did not start: {log.read_text()[-2000:]}")
        time.sleep(1)


def main(args: argparse.Namespace) -> None:
    rows = []
    for mode in ("unary", "batch100"):
        for fe, rep in ((1, 1), (2, 2)):
            m = measure(args, mode, fe, rep)
            rows.append(m.row())
            print(json.dumps(m.row()), flush=True)
    print()
    print("| load | front ends x replicas | decisions/s | p99 ms | CPU cores used (front end / replica / ray / store) "
          "| decisions per core-second (front end / replica) |")
    print("| --- | --- | ---: | ---: | --- | --- |")
    for r in rows:
        c = r["cpu_cores"]
        d = r["decisions_per_core_s"]
        print(
            f"| {r['mode']} | {r['frontends']} x {r['replicas']} | {r['decisions_per_s']:,} | {r['p99_ms']:.1f} "
            f"| {c['frontend']:.2f} / {c['replica']:.2f} / {c['ray']:.2f} / {c['store']:.2f} "
            f"| {d.get('frontend', 0):,} / {d.get('replica', 0):,} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
