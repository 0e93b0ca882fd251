"""Ray's own channels against the direct channel, one batch per call.

Issue 5 asked for the front end -> replica channel to be chosen by measurement,
Ray Compiled Graphs included. The same work crosses every channel: the caller
encodes a ``RequestBatch`` with the direct channel's frames, the replica decodes
it, answers with a canned ``DecisionBatch`` of the same size (no scoring: only
the channel is measured) and encodes that back. Channels:

* ``actor``: a plain Ray actor call, ``ray.get(actor.call.remote(blob))``;
* ``compiled``: the same actor method through a Ray Compiled Graph
  (``dag.experimental_compile()``: shared-memory channels set up once, no task
  submission per call);
* ``direct``: the replica's ``ChannelServer`` socket, through ``DirectBackend``,
  exactly as the front end uses it (the replica scores on a worker thread);
* ``direct-inline``: the same with the replica answering on the channel's event
  loop (``ChannelServer(inline_max=...)``), to show what the thread hop costs.

Each channel gets its own actor (an actor in a compiled graph runs the graph's
loop and takes no other calls). Calls are serial, one in flight, so a figure is
a round trip; rounds interleave the channels so they share the machine's noise.
Like ``naive.py``, this module talks to Ray directly: it measures Ray itself.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from services.runtime.channel import ChannelServer, DirectBackend, frames, static_endpoints
from services.schema.records import REQUEST_DTYPE, DecisionBatch, RequestBatch, blank_decisions

CHANNELS = ("actor", "compiled", "direct", "direct-inline")


def request_batch(n: int) -> RequestBatch:
    """n realistic requests (ids and sizes as the load generator sends them)."""
    rows = np.zeros(n, REQUEST_DTYPE)
    rows["application_id"] = [f"lt-bench-{i:012d}".encode() for i in range(n)]
    rows["merchant_id"] = [f"M{i % 100_000:08d}".encode() for i in range(n)]
    rows["amount_minor"] = 500_000 + np.arange(n)
    rows["term_months"] = 12
    rows["product"] = 1
    rows["channel"] = 1
    rows["declared_revenue_minor"] = np.nan
    rows["deadline"] = time.time() + 3600
    return RequestBatch(rows)


def canned_response(n: int) -> DecisionBatch:
    """A decided ``DecisionBatch`` of n rows, shaped like the engine's."""
    rows = blank_decisions(n)
    rows["decision"] = 1
    rows["decision_id"] = [f"{i:026d}".encode() for i in range(n)]
    rows["approved_minor"] = 500_000
    rows["apr_bps"] = 1_250
    rows["risk_grade"] = b"B"
    rows["pd"] = 0.031
    rows["model_version"] = b"20261122T000000"
    rows["policy_version"] = b"policy-1"
    rows["feature_age_s"] = 3600.0
    return DecisionBatch(rows, reason_table=(("HIGH_VELOCITY", "many applications"),))


class _Probe:
    """The replica side: decode, answer from the canned responses, encode."""

    def __init__(self) -> None:
        self._canned: dict[int, DecisionBatch] = {}
        self._server: ChannelServer | None = None

    def _answer(self, batch: RequestBatch) -> DecisionBatch:
        n = len(batch)
        if n not in self._canned:
            self._canned[n] = canned_response(n)
        return self._canned[n]

    def call(self, blob: bytes) -> bytes:
        batch, _ = frames.decode(RequestBatch, memoryview(blob))
        return b"".join(bytes(p) for p in frames.encode(self._answer(batch)))

    def start_channel(self, inline_max: int = 0, secret: bytes | None = None) -> str:
        self._server = ChannelServer(self._answer, inline_max=inline_max, secret=secret)
        return self._server.start()

    def stop_channel(self) -> None:
        if self._server is not None:
            self._server.stop(drain_s=1.0)


@dataclass(frozen=True)
class Figure:
    channel: str
    batch: int
    round: int
    calls: int
    wall_s: float
    p50_us: float
    p99_us: float
    machine_cpu_s: float  # every process's CPU over the calls (psutil.cpu_times), less idle

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s

    @property
    def cpu_us_per_call(self) -> float:
        return self.machine_cpu_s / self.calls * 1e6


def _busy_s() -> float:
    """CPU seconds spent by the whole machine so far (user + nice + system + irq + softirq)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def _time_calls(call: Callable[[], Any], calls: int) -> tuple[float, list[float], float]:
    lat: list[float] = []
    c0, t0 = _busy_s(), time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    return time.perf_counter() - t0, lat, _busy_s() - c0


async def _time_calls_async(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, list[float], float]:
    # One running loop for the whole measurement, as in the front end.
    lat: list[float] = []
    c0, t0 = _busy_s(), time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t)
    return time.perf_counter() - t0, lat, _busy_s() - c0


def _figure(case: tuple[str, int, int], wall: float, lat: list[float], cpu: float) -> Figure:
    """case: (channel, batch size, round)."""
    lat.sort()
    return Figure(*case, len(lat), wall, statistics.median(lat) * 1e6,
                  lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6, cpu)


def check_answer(blob: bytes | DecisionBatch, n: int) -> None:
    """Raise unless a channel brought back the canned answer for n requests."""
    resp = blob if isinstance(blob, DecisionBatch) else frames.decode(DecisionBatch, memoryview(blob))[0]
    expected = canned_response(n)
    if len(resp) != n or resp.rows.tobytes() != expected.rows.tobytes():
        raise AssertionError(f"channel returned a wrong answer for a batch of {n}")


@dataclass
class _Channels:
    """The channels under test, with the batches they carry (one instance per run)."""

    loop: asyncio.AbstractEventLoop
    backends: dict[str, DirectBackend]
    plain: Any  # the actor called with .remote()
    graphed: Any  # the actor behind a compiled graph
    batches: dict[int, RequestBatch]
    blobs: dict[int, bytes]

    def measure(self, way: str, n: int, warm: int, timed: int) -> tuple[float, list[float], float]:
        if way in self.backends:
            return self._direct(self.backends[way], n, warm, timed)
        return self._ray(way, n, warm, timed)

    def _direct(self, backend: DirectBackend, n: int, warm: int, timed: int) -> tuple[float, list[float], float]:
        for _ in range(warm):
            out = self.loop.run_until_complete(backend.score(self.batches[n]))
        if warm:
            check_answer(out, n)
        return self.loop.run_until_complete(_time_calls_async(lambda: backend.score(self.batches[n]), timed))

    def _ray(self, way: str, n: int, warm: int, timed: int) -> tuple[float, list[float], float]:
        import ray
        from ray.dag import InputNode

        compiled: Any = None
        if way == "actor":
            def one() -> Any:
                return ray.get(self.plain.call.remote(self.blobs[n]))
        else:
            with InputNode() as inp:
                dag = self.graphed.call.bind(inp)
            compiled = dag.experimental_compile()

            def one() -> Any:
                return ray.get(compiled.execute(self.blobs[n]))
        try:
            for _ in range(warm):
                out = one()
            if warm:
                check_answer(out, n)
            return _time_calls(one, timed)
        finally:
            if compiled is not None:
                compiled.teardown()


def run(sizes: Sequence[int], calls: int, rounds: int, num_cpus: int = 2) -> list[Figure]:
    """Start a local Ray cluster, measure every channel for every batch size, stop it.

    The compiled graph is compiled before each of its measurements and torn down
    after: its actor loop polls for input, and left running it would take CPU from
    the other channels' measurements.
    """
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    loop = asyncio.new_event_loop()
    figures: list[Figure] = []
    secret = secrets.token_bytes(32)  # the direct channel authenticates, as served
    try:
        probe: Any = ray.remote(num_cpus=0)(_Probe)
        plain, graphed, direct, inline = (probe.remote() for _ in range(4))
        backends = {
            "direct": DirectBackend(static_endpoints([ray.get(direct.start_channel.remote(0, secret))]), secret=secret),
            "direct-inline": DirectBackend(
                static_endpoints([ray.get(inline.start_channel.remote(1 << 30, secret))]), secret=secret),
        }
        for backend in backends.values():
            loop.run_until_complete(backend.start())
        # What the machine burns with Ray up and nothing to do (raylet, GCS, other
        # tenants): subtracted from every measurement's CPU.
        c0 = _busy_s()
        time.sleep(1.0)
        idle_per_s = _busy_s() - c0
        batches = {n: request_batch(n) for n in sizes}
        blobs = {n: b"".join(bytes(p) for p in frames.encode(b)) for n, b in batches.items()}
        channels = _Channels(loop, backends, plain, graphed, batches, blobs)
        for rnd in range(rounds):
            for n in sizes:
                for way in CHANNELS:
                    wall, lat, cpu = channels.measure(way, n, 20, calls)
                    figures.append(_figure((way, n, rnd), wall, lat, max(0.0, cpu - idle_per_s * wall)))
        for backend in backends.values():
            loop.run_until_complete(backend.close())
        ray.get([direct.stop_channel.remote(), inline.stop_channel.remote()])
    finally:
        loop.close()
        ray.shutdown()
    return figures


def median_by_case(figures: Sequence[Figure]) -> dict[tuple[str, int], Figure]:
    """Per (channel, batch size), the round with the median p50."""
    out: dict[tuple[str, int], Figure] = {}
    for key in {(f.channel, f.batch) for f in figures}:
        rows = sorted((f for f in figures if (f.channel, f.batch) == key), key=lambda f: f.p50_us)
        out[key] = rows[len(rows) // 2]
    return out
