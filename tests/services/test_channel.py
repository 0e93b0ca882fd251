"""The direct channel: frames round-trip exactly; a replica lost mid-batch is retried elsewhere once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from services.errors import BackendUnavailable, DeadlineExceeded, Overloaded
from services.frontend.codec import Item, to_batch
from services.runtime.channel import ChannelServer, DirectBackend
from services.runtime.channel.client import static_endpoints
from services.scoring import RequestBatch, ResponseBatch
from services.scoring.batch import STAGES


def _response(batch: RequestBatch, tag: int) -> ResponseBatch:
    n = len(batch)
    return ResponseBatch(
        status=np.zeros(n, np.int8), decision=np.full(n, tag, np.int8), approved_minor=batch.amount_minor.copy(),
        apr_bps=np.full(n, 700, np.int32), grade=np.zeros(n, np.int8), pd=np.linspace(0, 1, n),
        reason=np.full((n, 3), -1, np.int16), reason_contrib=np.zeros((n, 3), np.float32),
        feature_age_s=np.ones(n, np.float32), stale=np.zeros(n, bool), degraded=np.zeros(n, bool),
        version=np.zeros(n, np.int8), decision_ids=b"\n".join(b"d%d" % i for i in range(n)),
        versions=(("m", "p"),), grade_letters=("A",), reason_table=(("X", "y"),), message="",
        stage_s=np.arange(len(STAGES), dtype=np.float32),
    )


def _batch(n: int, deadline_s: float = 10.0) -> RequestBatch:
    return to_batch(
        [Item(f"a{i}", f"M{i}", 100 + i, 0, 12, 1, 1, float("nan"), time.time() + deadline_s) for i in range(n)]
    )


def _server(score: Callable[[RequestBatch], ResponseBatch], **kw: object) -> ChannelServer:
    s = ChannelServer(score, **kw)  # type: ignore[arg-type]
    s.start()
    return s


def test_round_trip_is_exact() -> None:
    srv = _server(lambda b: _response(b, 1))

    async def run() -> None:
        be = DirectBackend(static_endpoints([srv.address]))
        await be.start()
        b = _batch(257)
        got = await be.score(b)
        want = _response(b, 1)
        for f in ("status", "decision", "approved_minor", "apr_bps", "pd", "reason", "stage_s"):
            assert np.array_equal(getattr(got, f), getattr(want, f)), f
        assert got.decision_ids == want.decision_ids and got.reason_table == want.reason_table
        assert got.versions == want.versions
        await be.close()

    asyncio.run(run())
    srv.stop()


def test_replica_lost_mid_batch_is_retried_once_elsewhere() -> None:
    entered = threading.Event()
    release = threading.Event()

    def stuck(b: RequestBatch) -> ResponseBatch:
        entered.set()
        release.wait(5)
        return _response(b, 9)

    a = _server(stuck)
    b = _server(lambda batch: _response(batch, 2))

    async def run() -> None:
        be = DirectBackend(static_endpoints([a.address]))
        await be.start()
        be._source = static_endpoints([a.address, b.address])  # the second replica registers later
        await be.refresh()
        assert len(be.replicas) == 2
        call = asyncio.ensure_future(_score_on(be, a.address))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        # Replica A dies while it holds the batch.
        await asyncio.get_running_loop().run_in_executor(None, lambda: a.stop(drain_s=0))
        resp = await asyncio.wait_for(call, 10)
        assert (resp.decision == 2).all()  # answered by B
        assert be.retries == 1
        await be.close()

    asyncio.run(run())
    release.set()
    b.stop()


async def _score_on(be: DirectBackend, address: str) -> ResponseBatch:
    # Force the first try onto ``address`` (least-loaded routing would pick either).
    for c in be._conns.values():
        c.inflight = 0 if c.address == address else 10**9
    return await be.score(_batch(50))


def test_every_replica_lost_is_unavailable_never_a_hang() -> None:
    srv = _server(lambda b: (time.sleep(0.2), _response(b, 1))[1])

    async def run() -> None:
        be = DirectBackend(static_endpoints([srv.address]))
        await be.start()
        call = asyncio.ensure_future(be.score(_batch(10)))
        await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(None, lambda: srv.stop(drain_s=0))
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(call, 5)
        await be.close()

    asyncio.run(run())


def test_busy_replica_and_deadline() -> None:
    gate = threading.Event()
    srv = _server(lambda b: (gate.wait(5), _response(b, 1))[1], max_inflight=1)

    async def run() -> None:
        be = DirectBackend(static_endpoints([srv.address]))
        await be.start()
        first = asyncio.ensure_future(be.score(_batch(5)))
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded):  # the only replica says it is busy
            await be.score(_batch(5))
        gate.set()
        await first
        gate.clear()
        with pytest.raises(DeadlineExceeded):  # no answer before the batch's deadline
            await be.score(_batch(5, deadline_s=0.2))
        gate.set()
        await be.close()

    asyncio.run(run())
    srv.stop()
