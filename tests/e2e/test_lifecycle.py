"""Pressure and lifecycle: bounded queues refuse fast, drain finishes in-flight work,
several front-end processes share a port, and `creditauth serve` stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.frontend import FrontEnd
from services.frontend.server import LIVENESS_SERVICE, SERVICE_NAME
from services.runtime import LocalBackend
from services.scoring import DecisionBatch, RequestBatch, ScoringEngine
from services.scoring.factory import build_engine
from tests.conftest import World
from tests.e2e import api_checks as c
from tests.e2e.conftest import LoopThread, settings_for
from tests.support import free_port


class _Slow(LocalBackend):
    """Scores every batch 0.3 s late: a replica slower than the offered load."""

    delay = 0.3

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        await asyncio.sleep(self.delay)
        return await super().score(batch)


class _Gated(LocalBackend):
    """Holds every batch until ``release``; counts the decisions that reached it."""

    def __init__(self, engine: ScoringEngine) -> None:
        super().__init__(engine)
        self.entered = 0
        self._open = asyncio.Event()

    async def score(self, batch: RequestBatch) -> DecisionBatch:
        self.entered += len(batch)
        await self._open.wait()
        return await super().score(batch)

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self._open.set)


def _serve(
    world: World, backend_cls: type[LocalBackend] = _Slow, **serving: object
) -> tuple[LoopThread, FrontEnd, LocalBackend]:
    settings = settings_for(world, **serving)
    lt = LoopThread()
    backend = backend_cls(build_engine(settings))

    async def up() -> FrontEnd:
        fe = FrontEnd(backend, settings.serving, settings.security)
        await fe.start()
        return fe

    return lt, lt.run(up()), backend


def _until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Wait for observed state (polled: a gRPC health status or a counter has no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_past_the_queue_bound_resource_exhausted_fast(world: World) -> None:
    lt, fe, _ = _serve(world, max_queue=20, max_inflight_batches=1, max_batch_size=10)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as ch:
            stub = pb_grpc.CreditAuthorizationStub(ch)
            futures = [stub.Authorize.future(c.request(i), timeout=20) for i in range(60)]
            codes = []
            for f in futures:
                try:
                    f.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 20
        assert codes.count(grpc.StatusCode.OK) >= 20
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        lt.run(fe.stop())
        lt.close()


def test_drain_finishes_in_flight_refuses_new_and_reports_not_serving(world: World) -> None:
    lt, fe, backend = _serve(world, backend_cls=_Gated, drain_timeout_s=10)
    assert isinstance(backend, _Gated)

    async def accepted() -> int:  # read on the loop: a request is queued or in the backend, never both
        return backend.entered + fe.batcher.queued

    def status(name: str = "") -> int:
        answer: int = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        return answer

    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{fe.port}")
        stub = pb_grpc.CreditAuthorizationStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        inflight = [stub.Authorize.future(c.request(i), timeout=20) for i in range(20)]
        _until(lambda: lt.run(accepted()) == 20, "all 20 requests inside the front end")
        stopping = asyncio.run_coroutine_threadsafe(fe.stop(), lt.loop)
        _until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING while draining")
        assert not any(f.done() for f in inflight)  # still held: the drain is waiting for them
        # Not ready, but alive: the kubelet must not kill a pod that is draining.
        assert status(LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
        backend.release(lt.loop)
        results = [f.result() for f in inflight]  # every in-flight request is answered
        assert all(r.decision_id for r in results)
        stopping.result(30)
        with pytest.raises(grpc.RpcError) as info:
            stub.Authorize(c.request(99), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
    finally:
        lt.close()


class _Reachable(LocalBackend):
    """Replicas that can become unreachable: what a Ray outage looks like to a front end."""

    reachable = True

    def healthy(self) -> bool:
        return self.reachable


def test_readiness_follows_replicas_and_stores_liveness_does_not(world: World) -> None:
    settings = settings_for(world)
    lt = LoopThread()
    backend = _Reachable(build_engine(settings))
    stores = [True]

    async def up() -> FrontEnd:
        fe = FrontEnd(backend, settings.serving, settings.security, ready=lambda: stores[0], health_interval_s=0.02)
        await fe.start()
        return fe

    fe = lt.run(up())
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)

            def status(name: str) -> int:
                answer: int = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                return answer

            assert [status(n) for n in ("", SERVICE_NAME, LIVENESS_SERVICE)] == [serving] * 3
            backend.reachable = False  # every replica lost
            _until(lambda: status("") == not_serving, "readiness NOT_SERVING without replicas")
            assert status(SERVICE_NAME) == not_serving
            assert status(LIVENESS_SERVICE) == serving  # a Ray outage never restarts the pod
            backend.reachable = True
            _until(lambda: status("") == serving, "readiness back with the replicas")
            stores[0] = False  # the stores say they are down
            _until(lambda: status(SERVICE_NAME) == not_serving, "readiness NOT_SERVING without stores")
            assert status(LIVENESS_SERVICE) == serving
            stores[0] = True
            _until(lambda: status("") == serving, "readiness back with the stores")
    finally:
        lt.run(fe.stop())
        lt.close()


def test_two_front_ends_share_one_port(world: World) -> None:
    lt, first, _ = _serve(world, backend_cls=LocalBackend)
    settings = settings_for(world, port=first.port)

    async def second_up() -> FrontEnd:
        fe = FrontEnd(LocalBackend(build_engine(settings)), settings.serving, settings.security)
        await fe.start()
        return fe

    second = lt.run(second_up())
    try:
        assert second.port == first.port

        def one(i: int) -> str:
            opts = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{first.port}", options=opts) as ch:
                decision_id: str = pb_grpc.CreditAuthorizationStub(ch).Authorize(c.request(i), timeout=20).decision_id
                return decision_id

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(one, range(64)))
        assert all(ids)
        # The kernel spread the connections: both front ends scored something.
        assert first.batcher.stats.decisions > 0 and second.batcher.stats.decisions > 0
    finally:
        lt.run(first.stop())
        lt.run(second.stop())
        lt.close()


@pytest.mark.slow
def test_serve_with_two_frontends_stops_cleanly_on_sigterm(world: World) -> None:
    port = free_port()
    exe = Path(sys.executable).parent / "creditauth"
    proc = subprocess.Popen(
        [str(exe), "serve", "--data-dir", str(world.data_dir), "--port", str(port), "--frontends", "2", "--plaintext"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    out = _Output(proc)
    try:
        assert out.serving(2, timeout_s=150), out.tail()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert st.status == health_pb2.HealthCheckResponse.SERVING
            r = pb_grpc.CreditAuthorizationStub(ch).Authorize(c.request(1), timeout=30)
            assert r.decision_id
        children = _children_named(proc.pid, "frontend")
        assert len(children) == 1
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(90)
        out.join(10)
        assert proc.returncode == 0, out.tail()
        assert b"draining" in out.text()
        assert not any(_alive(pid) for pid in children)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)




class _Output:
    """A process's output, read on a thread, so a test can wait for what it says."""

    SERVING = b"creditauth: serving on"

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._lines: list[bytes] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def serving(self, frontends: int, timeout_s: float) -> bool:
        """Whether ``frontends`` front ends said they serve (each prints one line once listening)."""

        def seen() -> bool:
            return self._ended or sum(self.SERVING in x for x in self._lines) >= frontends

        with self._changed:
            self._changed.wait_for(seen, timeout_s)
            return sum(self.SERVING in x for x in self._lines) >= frontends

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def text(self) -> bytes:
        with self._changed:
            return b"".join(self._lines)

    def tail(self) -> str:
        return self.text().decode(errors="replace")[-2000:]


def _children_named(pid: int, word: str) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if word in line]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
