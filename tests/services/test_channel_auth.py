"""The locked channel: only a peer that proves it holds the secret gets a frame read; silent or
oversized peers are dropped; malformed batches are refused per item or as a whole, never a crash.

Real sockets against a real ``ChannelServer``. Waits are on observed conditions (a closed
socket, a counter reaching a value) with a bound, never on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from services.errors import BackendUnavailable, ConfigError, InvalidRequest
from services.runtime.channel import ChannelServer, Op, auth, frames
from services.runtime.channel.connection import Connection
from services.schema.codes import Code
from services.schema.records import DECISION_DTYPE, RequestBatch
from services.scoring import DecisionBatch
from services.settings import RaySettings
from tests.services.test_channel import SECRET, WAIT_S, _batch, _response, backend, raw_handshake

ROOT = Path(__file__).resolve().parents[2]


class Scored:
    """A score function that counts the rows it was given (to prove nothing got through)."""

    def __init__(self) -> None:
        self.rows = 0
        self.lock = threading.Lock()

    def __call__(self, batch: RequestBatch) -> DecisionBatch:
        with self.lock:
            self.rows += len(batch)
        return _response(batch, 1)


@pytest.fixture
def served() -> Iterator[tuple[ChannelServer, Scored]]:
    scored = Scored()
    srv = ChannelServer(scored, secret=SECRET, handshake_timeout_s=0.3, max_frame=1 << 16)
    srv.start()
    yield srv, scored
    srv.stop(drain_s=1)


def _connect(srv: ChannelServer) -> socket.socket:
    host, port = srv.address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) the socket: drains what it sent first."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def _until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.005)  # a bounded poll of an observed counter, not a sleep-to-sync


def _score_frame(n: int = 3) -> list[frames.Part]:
    return frames.frame(1, Op.SCORE, frames.encode(_batch(n)))


def test_a_peer_without_the_secret_is_refused_and_nothing_is_scored(served: tuple[ChannelServer, Scored]) -> None:
    srv, scored = served
    with _connect(srv) as sock:
        sock.sendall(b"".join(bytes(p) for p in _score_frame()))  # frames straight away, no handshake
        assert _closed(sock)
    _until(lambda: srv.stats.refused == 1)

    async def plaintext_client() -> None:
        be = backend([srv.address], secret=None)
        await be.start()
        with pytest.raises(BackendUnavailable):  # its frame is no proof: the connection is closed
            await be.score(_batch(3))
        await be.close()

    asyncio.run(plaintext_client())
    _until(lambda: srv.stats.refused == 2)
    assert scored.rows == 0 and srv.stats.batches == 0


def test_a_wrong_secret_is_refused_on_both_sides_and_logged_once_per_peer(
    served: tuple[ChannelServer, Scored], caplog: pytest.LogCaptureFixture
) -> None:
    srv, scored = served
    wrong = bytes(reversed(SECRET))

    async def run() -> None:
        for _ in range(3):
            with pytest.raises(auth.HandshakeFailed, match=r"replica proof does not match|closed the connection"):
                await Connection(srv.address, secret=wrong).connect(WAIT_S)

    with caplog.at_level(logging.WARNING, logger="services.runtime.channel.server"):
        asyncio.run(run())
        _until(lambda: srv.stats.refused == 3)
    refusals = [r for r in caplog.records if "refused a channel connection" in r.getMessage()]
    assert len(refusals) == 1 and "does not match the channel secret" in refusals[0].getMessage()
    assert scored.rows == 0


def test_a_client_does_not_trust_a_replica_without_the_secret() -> None:
    impostor = ChannelServer(lambda b: _response(b, 9), secret=bytes(reversed(SECRET)))
    impostor.start()

    async def run() -> None:
        with pytest.raises(auth.HandshakeFailed):
            await Connection(impostor.address, secret=SECRET).connect(WAIT_S)

    asyncio.run(run())
    impostor.stop(drain_s=1)


def test_a_silent_peer_is_dropped_within_the_timeout(served: tuple[ChannelServer, Scored]) -> None:
    srv, _ = served
    t0 = time.monotonic()
    with _connect(srv) as sock:
        assert sock.recv(auth.HELLO).startswith(auth.MAGIC)  # then says nothing
        assert _closed(sock)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < WAIT_S  # the 0.3 s handshake bound, not the test's patience
    _until(lambda: srv.stats.refused == 1)


def test_silent_peers_hold_at_most_max_handshakes_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.runtime.channel import server as server_module

    monkeypatch.setattr(server_module, "MAX_HANDSHAKES", 2)
    srv = ChannelServer(Scored(), secret=SECRET, handshake_timeout_s=WAIT_S)
    srv.start()
    silent = [_connect(srv) for _ in range(2)]
    for sock in silent:  # both are in the handshake once each has its challenge
        assert sock.recv(auth.HELLO).startswith(auth.MAGIC)
    with _connect(srv) as third:
        assert _closed(third)  # refused at once, not after the timeout
    assert srv.stats.refused == 1
    for sock in silent:
        sock.close()
    srv.stop(drain_s=1)


def test_a_short_proof_is_bounded_in_bytes(served: tuple[ChannelServer, Scored]) -> None:
    srv, _ = served
    with _connect(srv) as sock:
        sock.recv(auth.HELLO)
        sock.sendall(b"x" * (auth.PROOF - 1) + b"\n" + b"y" * 10_000)  # the proof is 64 bytes, no more is read
        assert _closed(sock)
    _until(lambda: srv.stats.refused == 1)


def test_an_oversized_length_header_is_refused_before_allocation(served: tuple[ChannelServer, Scored]) -> None:
    srv, scored = served
    with _connect(srv) as sock:
        raw_handshake(sock, SECRET)
        sock.sendall(frames.FRAME.pack(1 << 31, 7, Op.SCORE))  # claims 2 GiB, sends none of it
        assert _closed(sock)  # closed on the header alone: nothing was waited for or allocated
    assert scored.rows == 0

    async def header_only() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(frames.FRAME.pack(4097 + 9, 1, Op.SCORE))  # no payload follows, no EOF
        with pytest.raises(frames.FrameError, match="limit 4096"):
            await asyncio.wait_for(frames.read_frame(reader, 4096), WAIT_S)

    asyncio.run(header_only())


def test_malformed_batches_get_invalid_argument_never_a_crash(served: tuple[ChannelServer, Scored]) -> None:
    srv, scored = served

    async def run() -> None:
        conn = Connection(srv.address, secret=SECRET)
        await conn.connect(WAIT_S)
        b = _batch(6)
        rows = b.rows.copy()
        rows["product"][1] = 99
        rows["application_id"][3] = b"ab\x00cd"
        rows["merchant_id"][4] = b"M\xff"
        got, _ = frames.decode(DecisionBatch, memoryview(await conn.call(Op.SCORE, frames.encode(RequestBatch(rows)))))
        assert got.status.tolist() == [0, Code.INVALID_ARGUMENT, 0, Code.INVALID_ARGUMENT, Code.INVALID_ARGUMENT, 0]
        assert got["decision"].tolist() == [1, 0, 1, 0, 0, 1]  # the good rows scored, in their places
        assert "item 1: product: must be a known product, got 99" in got.message
        assert "item 3: application_id" in got.message and "item 4: merchant_id" in got.message
        assert scored.rows == 3 and srv.stats.invalid == 3

        wrong = RequestBatch(np.zeros(4, DECISION_DTYPE))  # records of another layout
        with pytest.raises(InvalidRequest, match="rows: must be request records"):
            await conn.call(Op.SCORE, frames.encode(wrong))
        flat = RequestBatch(np.zeros((2, 2), b.rows.dtype))
        with pytest.raises(InvalidRequest, match="1-dimensional"):
            await conn.call(Op.SCORE, frames.encode(flat))
        with pytest.raises(Exception, match="undecodable batch"):
            await conn.call(Op.SCORE, [b"\x05\x00\x00\x00{{{{{"])
        assert conn.alive and scored.rows == 3  # answered each, scored none of them
        conn.close()

    asyncio.run(run())


def test_a_correct_peer_scores(served: tuple[ChannelServer, Scored]) -> None:
    srv, scored = served

    async def run() -> None:
        be = backend([srv.address])
        await be.start()
        got = await be.score(_batch(40))
        assert (got.status == 0).all() and len(got) == 40
        await be.close()

    asyncio.run(run())
    assert scored.rows == 40 and srv.stats.refused == 0


def test_plaintext_when_both_sides_say_so() -> None:
    srv = ChannelServer(lambda b: _response(b, 4), secret=None)
    srv.start()

    async def run() -> None:
        be = backend([srv.address], secret=None)
        await be.start()
        assert ((await be.score(_batch(2)))["decision"] == 4).all()
        await be.close()

    asyncio.run(run())
    srv.stop(drain_s=1)
    with pytest.raises(ValueError, match="need at least 16"):
        ChannelServer(lambda b: _response(b, 4), secret=b"short")


# -- where the secret comes from ----------------------------------------------------------


def test_secret_resolution(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "secret"
    good.write_bytes(b"k" * 32 + b"\n")
    assert auth.resolve_secret(RaySettings(channel_secret_file=good), "replica") == b"k" * 32
    short = tmp_path / "short"
    short.write_bytes(b"k" * 15)
    with pytest.raises(ConfigError, match=f"channel_secret_file {short}: 15 bytes, need at least 16"):
        auth.resolve_secret(RaySettings(channel_secret_file=short), "replica")
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"{missing}: cannot read"):
        auth.resolve_secret(RaySettings(channel_secret_file=missing), "replica")
    with pytest.raises(ConfigError, match=r"front end: the direct channel needs a secret.*channel_plaintext"):
        auth.resolve_secret(RaySettings(), "front end")
    with caplog.at_level(logging.WARNING):
        assert auth.resolve_secret(RaySettings(channel_plaintext=True), "replica") is None
    assert any("PLAINTEXT" in r.getMessage() for r in caplog.records)
    made = auth.write_secret(tmp_path)
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o600 and len(auth.read_secret(made)) == 32
    with pytest.raises(FileExistsError):  # never reuses a file someone put there
        auth.write_secret(tmp_path)


def test_the_stack_locks_its_own_local_cluster_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    from services.settings import Settings
    from services.stack import Stack

    stack = Stack(Settings())
    locked = stack._lock_channel(stack.settings)
    path = locked.ray.channel_secret_file
    assert path is not None and locked.ray.channel_bind_host == "127.0.0.1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(auth.read_secret(path)) == 32
    stack._forget_secret()
    assert not path.exists() and not path.parent.exists()

    remote = Settings(ray=RaySettings(address="10.0.0.1:6380"))
    with pytest.raises(ConfigError, match="needs a secret"):
        Stack(remote)._lock_channel(remote)
    remote_plain = Settings(ray=RaySettings(address="10.0.0.1:6380", channel_plaintext=True))
    assert Stack(remote_plain)._lock_channel(remote_plain).ray.channel_bind_host is None  # the node IP
    plaintext = Settings(ray=RaySettings(channel_plaintext=True))
    assert Stack(plaintext)._lock_channel(plaintext).ray.channel_secret_file is None


def test_the_frame_fuzzer_runs_clean() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_frames.py"), "--runs", "3000", "--seed", "7"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "inputs 3000" in proc.stdout and "crashes 0" in proc.stdout


def test_a_replica_registers_an_address_front_ends_can_dial() -> None:
    from services.runtime.seam.replica import _advertised, _bind_host

    assert _bind_host("127.0.0.1") == "127.0.0.1"
    assert _bind_host(None) not in ("0.0.0.0", "::")  # unset: this node's own address
    assert _advertised("127.0.0.1:5001", None) == "127.0.0.1:5001"
    assert _advertised("10.1.2.3:5001", "scorer.ns.svc") == "scorer.ns.svc:5001"
    anywhere = _advertised("0.0.0.0:5001", None)  # bound everywhere: registers the node IP instead
    assert anywhere.endswith(":5001") and not anywhere.startswith("0.0.0.0")
