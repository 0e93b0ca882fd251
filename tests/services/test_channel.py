"""The direct channel: frames round-trip exactly; a replica lost mid-batch is retried elsewhere once;
busy replicas, deadlines, error codes, control ops and oversized frames behave as documented.
Every server and client here holds the channel secret (the handshake itself:
tests/services/test_channel_auth.py).

Nothing here waits on a timer: a test that needs a call to be in a replica waits for the
replica's score function to say so (a ``threading.Event``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from services.errors import (
    BackendUnavailable,
    CreditAuthError,
    DeadlineExceeded,
    InternalError,
    ModelError,
    Overloaded,
    code_of,
)
from services.runtime.channel import ChannelServer, DirectBackend, Op, auth, frames, static_endpoints
from services.runtime.channel.connection import Connection
from services.schema.codes import Code
from services.schema.records import REQUEST_DTYPE, blank_decisions
from services.scoring import DecisionBatch, RequestBatch

WAIT_S = 10.0  # an upper bound on any event wait: a hang fails the test instead of the run
SECRET = secrets.token_bytes(32)  # made per run, as services.stack makes one per local cluster


def _response(batch: RequestBatch, tag: int) -> DecisionBatch:
    n = len(batch)
    rows = blank_decisions(n)
    rows["decision"] = tag
    rows["approved_minor"] = batch["amount_minor"]
    rows["application_id"] = batch["application_id"]
    rows["apr_bps"] = 700
    rows["pd"] = np.linspace(0, 1, n)
    rows["decision_id"] = [b"d%d" % i for i in range(n)]
    rows["reason"][:, 0] = 0
    return DecisionBatch(rows, reason_table=(("X", "y"),), message="", stage_s={"kernel": 0.25})


def _batch(n: int, deadline_s: float = 10.0) -> RequestBatch:
    rows = np.zeros(n, REQUEST_DTYPE)
    rows["application_id"] = [f"a{i}".encode() for i in range(n)]
    rows["merchant_id"] = [f"M{i}".encode() for i in range(n)]
    rows["amount_minor"] = 100 + np.arange(n)
    rows["term_months"] = 12
    rows["product"] = 1
    rows["channel"] = 1
    rows["declared_revenue_minor"] = np.nan
    rows["deadline"] = time.time() + deadline_s
    return RequestBatch(rows, trace="00-abc-def-01")


def _server(score: Callable[[RequestBatch], DecisionBatch], **kw: object) -> ChannelServer:
    kw.setdefault("secret", SECRET)
    s = ChannelServer(score, **kw)  # type: ignore[arg-type]
    s.start()
    return s


def backend(addresses: list[str], secret: bytes | None = SECRET, **kw: object) -> DirectBackend:
    return DirectBackend(static_endpoints(addresses), secret=secret, **kw)  # type: ignore[arg-type]


def raw_handshake(sock: socket.socket, secret: bytes) -> None:
    """The client's side of the handshake by hand, on a blocking socket (to then misbehave)."""
    sock.settimeout(WAIT_S)
    hello = _recv_exactly(sock, auth.HELLO)
    assert hello.startswith(auth.MAGIC)
    sn, cn = hello[len(auth.MAGIC) :], secrets.token_bytes(auth.NONCE)
    sock.sendall(cn + hmac.new(secret, auth.LABEL + b"client" + sn + cn, hashlib.sha256).digest())
    proof = _recv_exactly(sock, auth.MAC)
    assert proof == hmac.new(secret, auth.LABEL + b"server" + sn + cn, hashlib.sha256).digest()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


async def _until(event: threading.Event) -> None:
    """Wait for a replica-side event without blocking the loop."""
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, WAIT_S)


def test_round_trip_is_exact() -> None:
    srv = _server(lambda b: _response(b, 1))

    async def run() -> None:
        be = backend([srv.address])
        await be.start()
        b = _batch(257)
        got = await be.score(b)
        want = _response(b, 1)
        assert got.rows.dtype == want.rows.dtype
        assert got.rows.tobytes() == want.rows.tobytes()
        assert got.reason_table == want.reason_table and got.stage_s == want.stage_s
        await be.close()

    asyncio.run(run())
    srv.stop()


def test_replica_lost_mid_batch_is_retried_once_elsewhere() -> None:
    entered = threading.Event()
    release = threading.Event()

    def stuck(b: RequestBatch) -> DecisionBatch:
        entered.set()
        release.wait(WAIT_S)
        return _response(b, 9)

    a = _server(stuck)
    b = _server(lambda batch: _response(batch, 2))

    async def run() -> None:
        addresses = [a.address]
        be = backend(addresses)
        await be.start()
        addresses.append(b.address)  # the second replica registers later
        await be.refresh()
        assert len(be.replicas) == 2
        call = asyncio.ensure_future(_score_on(be, a.address))
        await _until(entered)
        # Replica A dies while it holds the batch.
        await asyncio.get_running_loop().run_in_executor(None, lambda: a.stop(drain_s=0))
        resp = await asyncio.wait_for(call, WAIT_S)
        assert (resp["decision"] == 2).all()  # answered by B
        assert be.retries == 1
        await be.close()

    asyncio.run(run())
    release.set()
    b.stop()


async def _score_on(be: DirectBackend, address: str) -> DecisionBatch:
    # Force the first try onto ``address`` (least-loaded routing would pick either).
    for c in be.membership.live():
        c.inflight = 0 if c.address == address else 10**9
    return await be.score(_batch(50))


def test_every_replica_lost_is_unavailable_never_a_hang() -> None:
    entered = threading.Event()
    release = threading.Event()

    def stuck(b: RequestBatch) -> DecisionBatch:
        entered.set()
        release.wait(WAIT_S)
        return _response(b, 1)

    srv = _server(stuck)

    async def run() -> None:
        be = backend([srv.address])
        await be.start()
        call = asyncio.ensure_future(be.score(_batch(10)))
        await _until(entered)
        await asyncio.get_running_loop().run_in_executor(None, lambda: srv.stop(drain_s=0))
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(call, WAIT_S)
        assert not be.healthy()
        await be.close()

    asyncio.run(run())
    release.set()


def test_busy_replica_and_deadline() -> None:
    entered = threading.Event()
    gate = threading.Event()

    def gated(b: RequestBatch) -> DecisionBatch:
        entered.set()
        gate.wait(WAIT_S)
        return _response(b, 1)

    srv = _server(gated, max_inflight=1)

    async def run() -> None:
        be = backend([srv.address])
        await be.start()
        first = asyncio.ensure_future(be.score(_batch(5)))
        await _until(entered)
        with pytest.raises(Overloaded):  # the only replica says it is busy
            await be.score(_batch(5))
        assert srv.stats.rejected == 1
        gate.set()
        await first
        gate.clear()
        with pytest.raises(DeadlineExceeded):  # no answer before the batch's deadline
            await be.score(_batch(5, deadline_s=0.2))
        gate.set()
        await be.close()

    asyncio.run(run())
    srv.stop()


def test_a_busy_replica_is_skipped_for_another() -> None:
    entered = threading.Event()
    gate = threading.Event()

    def gated(b: RequestBatch) -> DecisionBatch:
        entered.set()
        gate.wait(WAIT_S)
        return _response(b, 1)

    busy = _server(gated, max_inflight=1)
    free = _server(lambda b: _response(b, 2))

    async def run() -> None:
        be = backend([busy.address, free.address])
        await be.start()
        await be.refresh()
        first = asyncio.ensure_future(_score_on(be, busy.address))
        await _until(entered)
        resp = await _score_on(be, busy.address)  # tried on the busy one first, answered by the other
        assert (resp["decision"] == 2).all() and busy.stats.rejected == 1
        assert be.retries == 0  # busy is not lost: no retry counted
        gate.set()
        await first
        await be.close()

    asyncio.run(run())
    busy.stop()
    free.stop()


def test_a_replica_error_arrives_as_the_services_error_for_its_code() -> None:
    def failing(b: RequestBatch) -> DecisionBatch:
        if len(b) == 1:
            raise ModelError("no model loaded")
        raise RuntimeError("a bug")

    srv = _server(failing)

    async def run() -> None:
        be = backend([srv.address])
        await be.start()
        with pytest.raises(ModelError, match="no model loaded"):
            await be.score(_batch(1))
        with pytest.raises(CreditAuthError, match="RuntimeError: a bug") as bug:
            await be.score(_batch(2))
        assert code_of(bug.value) == Code.INTERNAL
        assert be.healthy()  # an error answer is not a lost replica
        await be.close()

    asyncio.run(run())
    srv.stop()


def test_control_ops_and_unknown_ops_on_one_connection() -> None:
    async def echo(payload: bytes) -> list[frames.Part]:
        return frames.json_payload({"echo": frames.read_json(payload)})

    srv = _server(lambda b: _response(b, 1), info=lambda: {"model_version": "m1"}, handlers={40: echo})

    async def run() -> None:
        conn = Connection(srv.address, secret=SECRET)
        await conn.connect(WAIT_S)
        assert frames.read_json(await conn.call(Op.PING, frames.json_payload({}))) == {"ok": True}
        info = frames.read_json(await conn.call(Op.INFO, frames.json_payload({})))
        assert info["model_version"] == "m1" and info["inflight_batches"] == 0
        assert frames.read_json(await conn.call(40, frames.json_payload({"x": 1}))) == {"echo": {"x": 1}}
        with pytest.raises(InternalError, match="no handler for op 99"):  # UNIMPLEMENTED
            await conn.call(99, [])
        assert conn.alive  # an unknown op is answered, not a dropped connection
        assert frames.read_json(await conn.call(Op.PING, [])) == {"ok": True}
        conn.close()

    asyncio.run(run())
    srv.stop()


def test_broadcast_gathers_every_replicas_answer() -> None:
    servers = [_server(lambda b: _response(b, 1), info=lambda k=k: {"policy_version": f"p{k}"}) for k in range(2)]

    async def run() -> None:
        be = backend([s.address for s in servers])
        await be.start()
        await be.refresh()
        answers = await be.broadcast(Op.INFO)
        assert set(answers) == {s.address for s in servers}
        got = {addr: a["policy_version"] for addr, a in answers.items() if isinstance(a, dict)}
        assert sorted(got.values()) == ["p0", "p1"]
        with pytest.raises(ValueError, match="not a control operation"):
            await be.broadcast(Op.SCORE)
        unknown = await be.broadcast(77)  # every replica answers UNIMPLEMENTED; none is dropped
        assert all(isinstance(a, InternalError) for a in unknown.values()) and len(be.replicas) == 2
        await be.close()

    asyncio.run(run())
    for s in servers:
        s.stop()


def test_an_oversized_frame_closes_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    srv = _server(lambda b: _response(b, 1), max_frame=1 << 16)
    host, port = srv.address.rsplit(":", 1)
    with caplog.at_level(logging.WARNING), socket.create_connection((host, int(port)), WAIT_S) as raw:
        raw_handshake(raw, SECRET)  # an authenticated peer: the frame limit still holds
        raw.sendall(frames.FRAME.pack(1 << 30, 1, Op.SCORE))  # claims a 1 GiB payload
        raw.settimeout(WAIT_S)
        assert raw.recv(1) == b""  # closed before anything was allocated or read
    assert any("limit 65536" in r.getMessage() for r in caplog.records)

    async def run() -> None:
        be = backend([srv.address])
        await be.start()
        assert len(await be.score(_batch(3))) == 3  # the server itself carries on
        small = backend([srv.address], max_frame=1024)
        await small.start()
        with pytest.raises(BackendUnavailable):  # a 728-byte batch, its 1216-byte answer too big for this client
            await small.score(_batch(2))
        await small.refresh()  # reconnects to the replica that was dropped
        with pytest.raises(InternalError, match="channel_max_frame_bytes"):  # refused before sending
            await small.score(_batch(50))
        assert small.healthy()  # nothing was sent: the connection is still up
        await small.close()
        await be.close()

    asyncio.run(run())
    srv.stop()
