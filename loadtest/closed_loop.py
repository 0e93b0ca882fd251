"""Closed-loop load: a fixed number of requests kept in flight until a count or time is reached.

Latency is recorded per RPC in an HdrHistogram (microseconds); for batch RPCs
every decision in the call shares the call's latency.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from hdrh.histogram import HdrHistogram

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from loadtest.mix import RequestMix


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, 60_000_000, 3)


@dataclass
class RunResult:
    mode: str
    rpcs: int = 0
    decisions: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    histogram: HdrHistogram = field(default_factory=new_histogram)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        h = self.histogram
        q = {f"p{p}": h.get_value_at_percentile(p) / 1000.0 for p in (50, 90, 99, 99.9)}
        return {
            "mode": self.mode,
            "rpcs": self.rpcs,
            "decisions": self.decisions,
            "seconds": round(self.seconds, 3),
            "decisions_per_s": round(self.decisions / self.seconds, 1) if self.seconds else 0.0,
            "rpcs_per_s": round(self.rpcs / self.seconds, 1) if self.seconds else 0.0,
            "latency_ms": {k: round(v, 3) for k, v in q.items()}
            | {"max": h.get_max_value() / 1000.0},
            "errors": self.errors,
            "outcomes": self.outcomes,
        }

    def _record(self, resp: pb.AuthorizeResponse) -> None:
        if resp.HasField("error"):
            key = grpc.StatusCode(_code(resp.error.code)).name if resp.error.code else "ERROR"
            self.errors[key] = self.errors.get(key, 0) + 1
            return
        name = pb.Decision.Name(resp.decision)
        self.outcomes[name] = self.outcomes.get(name, 0) + 1
        interesting = len(self.samples) < 3 or resp.decision != pb.DECISION_APPROVE
        if len(self.samples) < 8 and interesting:
            self.samples.append(MessageToDict(resp))


def _code(n: int) -> tuple[int, str]:
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c.value  # type: ignore[no-any-return]
    return grpc.StatusCode.UNKNOWN.value  # type: ignore[no-any-return]


async def run_unary(
    stub: pb_grpc.CreditAuthorizationStub, mix: RequestMix, *, requests: int, concurrency: int, timeout_s: float
) -> RunResult:
    res = RunResult("unary")
    it = iter(range(requests))

    async def worker() -> None:
        for _ in it:
            req = mix.next()
            t0 = time.perf_counter()
            try:
                resp = await stub.Authorize(req, timeout=timeout_s)
                res._record(resp)
            except grpc.aio.AioRpcError as exc:
                res.errors[exc.code().name] = res.errors.get(exc.code().name, 0) + 1
            res.histogram.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
            res.rpcs += 1
            res.decisions += 1

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.seconds = time.perf_counter() - t
    return res


async def run_batch(
    stub: pb_grpc.CreditAuthorizationStub,
    mix: RequestMix,
    *,
    calls: int,
    size: int,
    concurrency: int,
    timeout_s: float,
) -> RunResult:
    res = RunResult(f"batch{size}")
    it = iter(range(calls))
    bodies = [mix.batch(size) for _ in range(min(calls, 64))]

    async def worker() -> None:
        for k in it:
            t0 = time.perf_counter()
            try:
                resp = await stub.AuthorizeBatch(bodies[k % len(bodies)], timeout=timeout_s)
                for r in resp.responses:
                    res._record(r)
            except grpc.aio.AioRpcError as exc:
                res.errors[exc.code().name] = res.errors.get(exc.code().name, 0) + size
            res.histogram.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
            res.rpcs += 1
            res.decisions += size

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.seconds = time.perf_counter() - t
    return res


async def run_stream(
    stub: pb_grpc.CreditAuthorizationStub,
    mix: RequestMix,
    *,
    requests: int,
    streams: int,
    window: int,
    timeout_s: float,
) -> RunResult:
    """Each stream keeps ``window`` requests outstanding; latency is send -> matching answer."""
    res = RunResult("stream")
    per = requests // streams

    async def one() -> None:
        call = stub.AuthorizeStream(timeout=timeout_s)
        sent: asyncio.Queue[float] = asyncio.Queue(window)

        async def send() -> None:
            for _ in range(per):
                await sent.put(time.perf_counter())
                await call.write(mix.next())
            await call.done_writing()

        sender = asyncio.ensure_future(send())
        for _ in range(per):
            resp = await call.read()
            if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                res.errors["EOF"] = res.errors.get("EOF", 0) + 1
                break
            t0 = sent.get_nowait()
            res.histogram.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
            res._record(resp)
            res.decisions += 1
        await sender
        res.rpcs += 1

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(streams)))
    res.seconds = time.perf_counter() - t
    return res
