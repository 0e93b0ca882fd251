"""An oversized request against a running front end: refused before it is buffered, while
another caller keeps being answered, and the front end's resident memory stays bounded.

Measured on the main of issue 15: one 48 MiB AuthorizeBatch blocked the event loop for
23 s and grew the front end from 0.76 GiB to 3.7 GiB. The receive limit is now sized to
the largest allowed batch (services.frontend.servicer.receive_limit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import psutil
import pytest

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.frontend.servicer import receive_limit
from services.settings import ServingSettings
from tests.conftest import World
from tests.e2e.api_checks import request
from tests.support import serving_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MiB = 1 << 20




@pytest.fixture(scope="module")
def frontend(world: World) -> Iterator[tuple[psutil.Process, int]]:
    with serving_process(world.data_dir) as served:
        yield served


def _oversized(megabytes: int) -> bytes:
    """An AuthorizeBatchRequest of minimal items, ``megabytes`` long (built as bytes: cheap)."""
    item = pb.AuthorizeRequest(application_id="x").SerializeToString()
    one = b"\x0a" + bytes([len(item)]) + item
    return one * (megabytes * MiB // len(one))


class _Other(threading.Thread):
    """Another caller's unary calls, back to back, with each one's latency."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port, self.stop = port, threading.Event()
        self.latencies: list[float] = []
        self.failures: list[grpc.StatusCode] = []

    def run(self) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            stub = pb_grpc.CreditAuthorizationStub(ch)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    stub.Authorize(request(0), timeout=30)
                    self.latencies.append(time.perf_counter() - t0)
                except grpc.RpcError as exc:
                    self.failures.append(exc.code())


class _Rss(threading.Thread):
    def __init__(self, proc: psutil.Process) -> None:
        super().__init__()
        self.proc, self.stop, self.peak = proc, threading.Event(), proc.memory_info().rss

    def run(self) -> None:
        while not self.stop.wait(0.005):  # the sampling period of the measurement, not a wait for state
            self.peak = max(self.peak, self.proc.memory_info().rss)


def test_oversized_batch_is_refused_unread_and_others_are_answered(frontend: tuple[psutil.Process, int]) -> None:
    proc, port = frontend
    limit = receive_limit(ServingSettings().max_batch_request)
    assert limit < 8 * MiB
    base = proc.memory_info().rss
    other, rss = _Other(port), _Rss(proc)
    other.start()
    rss.start()
    opts = [("grpc.max_send_message_length", -1)]
    refused = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
            raw = ch.unary_unary("/creditauth.v1.CreditAuthorization/AuthorizeBatch")
            for size in (8, 48, 48):
                body = _oversized(size)
                t0 = time.perf_counter()
                with pytest.raises(grpc.RpcError) as err:
                    raw(body, timeout=60)
                refused.append((err.value.code(), time.perf_counter() - t0))
    finally:
        other.stop.set()
        rss.stop.set()
        other.join(60)
        rss.join(60)
    assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in refused), refused
    assert all(seconds < 10 for _, seconds in refused), refused
    assert other.failures == []
    assert len(other.latencies) >= 10
    assert max(other.latencies) < 2.0, f"another caller waited {max(other.latencies):.2f} s"
    growth = (rss.peak - base) / MiB
    print(f"\noversized: refused {[(c.name, round(t, 3)) for c, t in refused]}, other caller "
          f"{len(other.latencies)} calls, max {max(other.latencies) * 1000:.1f} ms, RSS +{growth:.0f} MiB")
    assert growth < 200, f"front end grew by {growth:.0f} MiB under oversized requests"
