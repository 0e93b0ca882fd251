"""A dead, silent or broken online store is a typed error within the configured time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from features import FeatureSettings, OnlineStoreUnavailable
from features.errors import FeatureError
from features.stores import open_backend
from tests.conftest import World, feature_settings, requires_redis
from tests.support import free_port

TIMEOUT = 0.3
TAG_BYTES = 136




class _FakeServer:
    """Accepts connections and answers each with ``reply`` (None: never answers)."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.reply = reply
        self.conns: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.reply is not None:
                try:
                    conn.recv(65536)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[_FakeServer]:
    srv = _FakeServer(request.param)
    yield srv
    srv.close()


def _settings(port: int) -> FeatureSettings:
    return FeatureSettings(online_store="redis", redis_url=f"redis://127.0.0.1:{port}/0", timeout_s=TIMEOUT)


def _read(s: FeatureSettings) -> None:
    open_backend(s).reader(TAG_BYTES).read(["M00000001", "M00000002"])


def _record(s: FeatureSettings) -> None:
    open_backend(s).velocity().record(["M00000001"])


def _lookup(s: FeatureSettings) -> None:
    open_backend(s).idempotency(window_s=60).lookup(["app-1"])


def _save(s: FeatureSettings) -> None:
    open_backend(s).idempotency(window_s=60).save(["app-1"], [b"record"])


def _timed_failure(call: Callable[[FeatureSettings], None], s: FeatureSettings) -> tuple[float, str]:
    t0 = time.monotonic()
    with pytest.raises(OnlineStoreUnavailable) as info:
        call(s)
    return time.monotonic() - t0, str(info.value)


@pytest.mark.parametrize("call", [_read, _record, _lookup, _save], ids=["read", "record", "lookup", "save"])
def test_closed_port_fails_fast(call: Callable[[FeatureSettings], None]) -> None:
    elapsed, msg = _timed_failure(call, _settings(free_port()))
    assert elapsed < TIMEOUT + 0.5 and "127.0.0.1" in msg


@pytest.mark.parametrize("server", [None], indirect=True)
@pytest.mark.parametrize("call", [_read, _record, _lookup, _save], ids=["read", "record", "lookup", "save"])
def test_listener_that_never_answers_times_out(server: _FakeServer, call: Callable[[FeatureSettings], None]) -> None:
    elapsed, msg = _timed_failure(call, _settings(server.port))
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 0.5
    assert "timed out" in msg


@pytest.mark.parametrize("server", [b"*2\r\n$1\r\n"], indirect=True)
def test_reply_cut_short_times_out(server: _FakeServer) -> None:
    elapsed, _ = _timed_failure(_read, _settings(server.port))
    assert elapsed < TIMEOUT + 0.5


@pytest.mark.parametrize("server", [b"HTTP/1.1 400 Bad Request\r\n\r\n"], indirect=True)
def test_not_redis_is_unavailable_not_a_crash(server: _FakeServer) -> None:
    elapsed, _ = _timed_failure(_read, _settings(server.port))
    assert elapsed < TIMEOUT + 0.5


@pytest.mark.parametrize("server", [b"-LOADING Redis is loading the dataset in memory\r\n"], indirect=True)
def test_transient_server_error_is_unavailable(server: _FakeServer) -> None:
    _, msg = _timed_failure(_read, _settings(server.port))
    assert "LOADING" in msg


@requires_redis
def test_reader_recovers_after_a_broken_connection(redis_world: World) -> None:
    import redis

    from features.stores.redis import RedisBackend

    backend = open_backend(feature_settings(redis_world))
    assert isinstance(backend, RedisBackend)
    reader = backend.reader()
    assert reader.read(["M00000001"]).found.all()
    # The connection dies under it: the server drops it (redis-py as an independent client).
    admin = redis.Redis()
    ours = [c["id"] for c in admin.client_list() if c["name"] == backend.client.name]
    assert len(ours) == 1
    assert admin.client_kill_filter(_id=ours[0]) == 1
    admin.close()
    with pytest.raises(OnlineStoreUnavailable):
        reader.read(["M00000001"])
    assert reader.read(["M00000001"]).found.all()  # reconnected
    reader.close()


def test_missing_sqlite_store_is_unavailable(tmp_path: Path) -> None:
    s = FeatureSettings(data_dir=tmp_path)
    with pytest.raises(OnlineStoreUnavailable):
        open_backend(s).reader(TAG_BYTES)
    with pytest.raises(OnlineStoreUnavailable):
        open_backend(s).velocity()


def test_errors_share_one_hierarchy() -> None:
    assert issubclass(OnlineStoreUnavailable, FeatureError)
