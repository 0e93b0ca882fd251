"""Pressure and lifecycle: bounded queues refuse fast, drain finishes in-flight work,
several front-end processes share a port, and `creditauth serve` stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.frontend import FrontEnd
from services.runtime import LocalBackend
from services.scoring.factory import build_engine
from tests.conftest import World
from tests.e2e import api_checks as c
from tests.e2e.conftest import LoopThread, settings_for


class _Slow(LocalBackend):
    delay = 0.3

    async def score(self, batch):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        return await super().score(batch)


def _serve(world: World, backend_cls: type[LocalBackend] = _Slow, **serving: object) -> tuple[LoopThread, FrontEnd]:
    settings = settings_for(world, **serving)
    lt = LoopThread()

    async def up() -> FrontEnd:
        fe = FrontEnd(backend_cls(build_engine(settings)), settings.serving)
        await fe.start()
        return fe

    return lt, lt.run(up())


def test_past_the_queue_bound_resource_exhausted_fast(world: World) -> None:
    lt, fe = _serve(world, max_queue=20, max_inflight_batches=1, max_batch_size=10)
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
    lt, fe = _serve(world, drain_timeout_s=10)
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{fe.port}")
        stub = pb_grpc.CreditAuthorizationStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        inflight = [stub.Authorize.future(c.request(i), timeout=20) for i in range(20)]
        time.sleep(0.1)  # they are in the slow backend now
        stopping = asyncio.run_coroutine_threadsafe(fe.stop(), lt.loop)
        time.sleep(0.05)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        results = [f.result() for f in inflight]  # every in-flight request is answered
        assert all(r.decision_id for r in results)
        stopping.result(30)
        with pytest.raises(grpc.RpcError) as info:
            stub.Authorize(c.request(99), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
    finally:
        lt.close()


def test_two_front_ends_share_one_port(world: World) -> None:
    lt, first = _serve(world, backend_cls=LocalBackend)
    settings = settings_for(world, port=first.port)

    async def second_up() -> FrontEnd:
        fe = FrontEnd(LocalBackend(build_engine(settings)), settings.serving)
        await fe.start()
        return fe

    second = lt.run(second_up())
    try:
        assert second.port == first.port

        def one(i: int) -> str:
            opts = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{first.port}", options=opts) as ch:
                return pb_grpc.CreditAuthorizationStub(ch).Authorize(c.request(i), timeout=20).decision_id

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
    port = _free_port()
    exe = Path(sys.executable).parent / "creditauth"
    proc = subprocess.Popen(
        [str(exe), "serve", "--data-dir", str(world.data_dir), "--port", str(port), "--frontends", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_serving(port, proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            r = pb_grpc.CreditAuthorizationStub(ch).Authorize(c.request(1), timeout=30)
            assert r.decision_id
        children = _children_named(proc.pid, "frontend")
        assert len(children) == 1
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
        assert b"draining" in out
        assert not any(_alive(pid) for pid in children)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_serving(port: int, proc: subprocess.Popen[bytes], timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited early"
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if st.status == health_pb2.HealthCheckResponse.SERVING and len(_children_named(proc.pid, "frontend")):
                    time.sleep(3)  # let the second front end come up too
                    return
        except grpc.RpcError:
            pass
        time.sleep(1)
    raise TimeoutError("serve did not become healthy")


def _children_named(pid: int, word: str) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if word in line]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
