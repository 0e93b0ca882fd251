"""Overload harness: a real front end process and an open-loop unary generator that keeps
every call's status and latency; run as a module it measures the table in docs/reliability.md.

    .venv/bin/python -m tests.faults.overload [--world DIR] [--reps 3] [--seconds 10]

The load generator of ``loadtest`` reports one latency histogram over every outcome; an
overload test needs them apart: how fast refusals come back, and how long the *admitted*
calls took (p50/p99 of OK), so this generator records each status's latency from the call's
intended send time (open loop: no coordinated omission) and from its actual send (what the
server is answerable for: on a shared box the generator itself falls behind), whether each
``RESOURCE_EXHAUSTED`` carried a ``RetryInfo``, and any answer after the call's deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from google.rpc import error_details_pb2, status_pb2

from creditauth.v1 import authorization_pb2 as pb
from services.frontend.admission import Limits
from services.frontend.details import TRAILER
from tests.support import free_port

METHOD = "/creditauth.v1.CreditAuthorization/Authorize"
# The limits of the front end before issue 16's shedding: gRPC's own pending bounds, no admission.
BEFORE = Limits(max_pending=1000, max_pending_hard=3000, max_calls=1 << 30, max_lag_s=1e9)
_RUN = uuid.uuid4().hex[:8]
_seq = itertools.count()


@contextlib.contextmanager
def front_end(
    data_dir: Path, limits: Limits | None = None, channel: str = "local", cpus: set[int] | None = None,
) -> Iterator[tuple[psutil.Process, int]]:
    """A front end, ready when entered: ``creditauth serve --channel CHANNEL`` as shipped
    (``local``: scoring in its process; ``direct``: Serve replicas in Ray, the front end's own
    connection to each), or, given ``limits``, the local front end with those (``_serve`` below).
    ``cpus``: the server and every process it starts run on these cores only."""
    port = free_port()
    common = ["--data-dir", str(data_dir), "--port", str(port)]
    if limits is None:
        cmd = ["-m", "services.cli.main", "serve", *common, "--channel", channel, "--plaintext", "--no-telemetry"]
    else:
        cmd = ["-m", "tests.faults.overload", "serve", *common, "--limits", json.dumps(dataclasses.asdict(limits))]
    taskset = shutil.which("taskset")
    pin = [taskset, "-c", ",".join(map(str, sorted(cpus)))] if cpus and taskset else []
    proc = subprocess.Popen([*pin, sys.executable, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # gRPC's wait_for_ready waits for the port
            ch.unary_unary(METHOD)(_body(), timeout=180, wait_for_ready=True)  # type: ignore[call-arg]
        yield psutil.Process(proc.pid), port
    finally:
        proc.terminate()
        proc.wait(60)


def _body() -> bytes:
    return _request()[1]


def _request() -> tuple[str, bytes]:
    """A fresh application's request: its id and its encoding."""
    app = f"ov-{_RUN}-{next(_seq)}"
    req = pb.AuthorizeRequest(
        application_id=app, merchant_id=f"M{next(_seq) % 3000:08d}", term_months=12,
        product=pb.PRODUCT_WORKING_CAPITAL, channel=pb.CHANNEL_POS_TERMINAL,
    )
    req.requested_amount.amount_minor, req.requested_amount.currency = 2_000_000, "CNY"
    return app, req.SerializeToString()


def has_retry_info(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the refusal's ``google.rpc.Status`` details carry a ``RetryInfo``."""
    trailers: Any = exc.trailing_metadata() or ()
    for key, value in trailers:
        if key == TRAILER:
            status = status_pb2.Status.FromString(value)
            return any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    return False


@dataclass
class Tally:
    """What one phase saw: counts per status, latencies in ms (from the intended and the actual send)."""

    offered: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    service_ms: dict[str, list[float]] = field(default_factory=dict)
    ok_per_s: Counter[int] = field(default_factory=Counter)
    errors_per_s: Counter[int] = field(default_factory=Counter)  # any status but OK, by second of the phase
    retry_info: int = 0  # RESOURCE_EXHAUSTED answers that said when to retry
    late: int = 0  # answered (with anything but the client's own DEADLINE_EXCEEDED) after the deadline
    lag_ms: list[float] = field(default_factory=list)  # how far behind schedule each send went
    # For the decision log's check: each OK call's application and answer (decoded later, off
    # the generator's loop), and the applications whose call ran out of time (decided or not).
    answers: list[tuple[str, bytes]] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)

    def add(self, code: str, t_int: float, t_send: float, t_done: float, t0: float) -> None:
        self.codes[code] += 1
        self.latency_ms.setdefault(code, []).append((t_done - t_int) * 1000)
        self.service_ms.setdefault(code, []).append((t_done - t_send) * 1000)
        (self.ok_per_s if code == "OK" else self.errors_per_s)[int(t_done - t0)] += 1

    def share(self, *codes: str) -> float:
        return sum(self.codes[c] for c in codes) / max(self.offered, 1)

    def pct(self, code: str, q: float, *, service: bool = False) -> float:
        xs = (self.service_ms if service else self.latency_ms).get(code)
        return float(np.percentile(xs, q)) if xs else float("nan")

    def row(self, seconds: float) -> dict[str, Any]:
        return {
            "offered_per_s": round(self.offered / seconds), "goodput_per_s": round(self.codes["OK"] / seconds),
            "shares": {k: round(v / max(self.offered, 1), 3) for k, v in sorted(self.codes.items())},
            "ok_ms": [round(self.pct("OK", q)) for q in (50, 99)],
            "ok_service_ms": [round(self.pct("OK", q, service=True)) for q in (50, 99)],
            "refused_service_ms": {c: [round(self.pct(c, q, service=True)) for q in (50, 99)]
                                   for c in ("RESOURCE_EXHAUSTED", "CANCELLED") if self.codes[c]},
            "retry_info": self.retry_info, "late": self.late,
            "send_lag_p99_ms": round(float(np.percentile(self.lag_ms, 99))) if self.lag_ms else 0,
        }


async def _call(stub: Any, tally: Tally, t_int: float, timeout_s: float, t0: float) -> None:
    app, body = _request()
    t_send = time.perf_counter()
    try:
        tally.answers.append((app, await stub(body, timeout=timeout_s)))
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and has_retry_info(exc):
            tally.retry_info += 1
        elif exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.timed_out.append(app)
    done = time.perf_counter()
    # The client's own DEADLINE_EXCEEDED fires at the deadline; any other answer past it (and
    # past the generator's own slack on a busy box) came when the caller no longer waited.
    if code != "DEADLINE_EXCEEDED" and done > t_send + timeout_s + 0.05:
        tally.late += 1
    tally.add(code, t_int, t_send, done, t0)


async def open_loop(
    port: int, rate: float, seconds: float, timeout_s: float = 2.0, sent: asyncio.Event | None = None
) -> Tally:
    """``rate`` unary calls per second for ``seconds``, each sent at its intended time (or as
    soon after as the generator can), whatever the server does; ``sent`` is set once the
    last one is sent."""
    tally = Tally()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ch.unary_unary(METHOD)  # type: ignore[call-arg]  # raw bytes both ways
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        for i in range(int(rate * seconds)):
            t_int = t0 + i / rate
            wait = t_int - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)  # the schedule's pacing, not a wait for state
            tally.lag_ms.append(max(0.0, time.perf_counter() - t_int) * 1000)
            tally.offered += 1
            task = asyncio.ensure_future(_call(stub, tally, t_int, timeout_s, t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if sent is not None:
            sent.set()
        await asyncio.gather(*tasks)
    return tally


async def closed_loop(port: int, concurrency: int, seconds: float, timeout_s: float = 2.0) -> Tally:
    """``concurrency`` callers, each sending its next call when the last is answered."""
    tally = Tally()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ch.unary_unary(METHOD)  # type: ignore[call-arg]  # raw bytes both ways
        t0 = time.perf_counter()

        async def caller() -> None:
            while time.perf_counter() < t0 + seconds:
                tally.offered += 1
                await _call(stub, tally, time.perf_counter(), timeout_s, t0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return tally


def capacity(port: int, seconds: float = 4.0, concurrency: int = 64) -> float:
    """Decisions per second a closed loop of ``concurrency`` callers gets (after a 2 s warm-up)."""
    asyncio.run(closed_loop(port, concurrency, 2.0))
    t = asyncio.run(closed_loop(port, concurrency, seconds))
    assert t.codes["OK"] == t.offered, t.codes
    return t.codes["OK"] / seconds


def merge(parts: list[Tally]) -> Tally:
    out = Tally()
    for t in parts:
        out.offered += t.offered
        out.codes.update(t.codes)
        out.ok_per_s.update(t.ok_per_s)
        out.errors_per_s.update(t.errors_per_s)
        out.retry_info += t.retry_info
        out.late += t.late
        out.lag_ms += t.lag_ms
        out.answers += t.answers
        out.timed_out += t.timed_out
        for mine, theirs in ((out.latency_ms, t.latency_ms), (out.service_ms, t.service_ms)):
            for code, xs in theirs.items():
                mine.setdefault(code, []).extend(xs)
    return out


def _worker(port: int, rate: float, seconds: float, sent: Any, results: Any) -> None:
    """One generator process: its share of the open loop; its tally on ``results``."""

    async def run() -> Tally:
        done = asyncio.Event()
        over = asyncio.ensure_future(open_loop(port, rate, seconds, sent=done))
        await done.wait()
        sent.set()
        return await over

    results.put(asyncio.run(run()))


def overload_then_recovery(
    port: int, rate: float, seconds: float, after_s: float, procs: int = 2
) -> tuple[Tally, Tally]:
    """``rate`` open loop for ``seconds`` from ``procs`` generator processes (one Python process
    cannot send and receive 3,000+ calls a second on time on a shared 2-core box), then a
    64-caller closed loop for ``after_s``, from the overload's last send (not its last answer:
    the backlog must not delay recovery)."""
    ctx = multiprocessing.get_context("spawn")  # no fork after gRPC started in this process
    results = ctx.Queue()
    sent = [ctx.Event() for _ in range(procs)]
    workers = [ctx.Process(target=_worker, args=(port, rate / procs, seconds, e, results)) for e in sent]
    for w in workers:
        w.start()
    try:
        for e in sent:
            assert e.wait(seconds + 120), "a generator process never finished sending"
        after = asyncio.run(closed_loop(port, 64, after_s))
        parts = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(30)
    return merge(parts), after


# -- the measurement ---------------------------------------------------------------
def _serve(args: argparse.Namespace) -> None:
    """One front end (in-process scoring) with the given limits, until SIGTERM."""
    import uvloop

    from services.frontend import FrontEnd
    from services.runtime import LocalBackend
    from services.scoring.factory import build_engine
    from services.settings import load_settings

    settings = load_settings(None, {
        "features": {"data_dir": args.data_dir}, "serving": {"host": "127.0.0.1", "port": args.port},
        "security": {"plaintext": True, "anonymous": {"name": "anonymous"}}, "telemetry": {"enabled": False},
    })
    limits = Limits(**json.loads(args.limits))

    async def run() -> None:
        fe = FrontEnd(LocalBackend(build_engine(settings)), settings.serving, settings.security, limits=limits)
        await fe.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await fe.stop()

    uvloop.run(run())


def _measure(args: argparse.Namespace) -> None:
    from tests.conftest import AS_OF, World, build_world

    world = World(args.world, AS_OF, "") if args.world else build_world(Path(tempfile.mkdtemp()) / "world")
    for rep in range(args.reps):  # before and after side by side, A B A B: the box is shared
        for name, limits in (("before", BEFORE), ("after", Limits())):
            with front_end(world.data_dir, limits) as (_, port):
                c = capacity(port)
                over, after = overload_then_recovery(port, 2 * c, args.seconds, 6)
            back = [after.ok_per_s[i] for i in range(6)]
            print(json.dumps({"rep": rep, "limits": name, "capacity": round(c), **over.row(args.seconds),
                              "after_per_s": back}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    serve = sub.add_parser("serve")
    serve.add_argument("--data-dir", type=Path, required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--limits", required=True)
    ap.add_argument("--world", type=Path, help="a world built before (else one is built in a temp dir)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the 2x overload lasts")
    args = ap.parse_args()
    _serve(args) if args.cmd == "serve" else _measure(args)


if __name__ == "__main__":
    main()
