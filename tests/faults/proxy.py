"""A TCP fault proxy for tests: sits between a client and a real server and misbehaves on cue.

``FaultProxy(upstream_port).start()`` listens on a loopback port of its own; clients dial
``proxy.port`` instead of the server. The test switches what the link does at any time:

- ``pass_through()``: bytes flow both ways (``latency_s`` > 0 delays every chunk);
- ``slow(latency_s)``: every chunk, each way, waits ``latency_s`` first;
- ``reset()``: every open connection is aborted with a TCP RST, and new ones are accepted
  and reset at once (a crashed server, a dropped NAT entry);
- ``black_hole()``: connections are accepted and bytes are swallowed, nothing ever comes
  back (a partitioned host: the worst case, every call waits its full timeout);
- ``flap(up_s, down_s)``: alternate between passing and resetting on that schedule, on a
  thread of its own, until another mode is chosen.

A connection that lost bytes in a black hole is reset when the link comes back (its
stream is corrupt). Counters (``accepted``, ``resets``) let tests check what happened.
The proxy's own threads wait on short ``select`` timeouts to notice mode changes and
closes: that is its machinery, not a test synchronising by sleeping.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Literal

Mode = Literal["pass", "reset", "black_hole"]
_TICK_S = 0.02  # how soon pumps notice a mode change or a close


def _abort(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server: socket.socket | None = None
        self.closed = threading.Event()
        self.poisoned = False  # bytes were dropped: the stream can never be trusted again

    def run(self) -> None:
        try:
            self.server = socket.create_connection(("127.0.0.1", self.proxy.upstream_port), timeout=2.0)
        except OSError:
            self.abort()
            return
        for src, dst in ((self.client, self.server), (self.server, self.client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True, name="fault-proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self.closed.is_set():
            try:
                ready, _, _ = select.select([src], [], [], _TICK_S)
                if not ready:
                    continue
                data = src.recv(65536)
            except (OSError, ValueError):
                break
            if not data:
                break
            if not self._forward(dst, data):
                break
        self.abort()

    def _forward(self, dst: socket.socket, data: bytes) -> bool:
        mode, latency = self.proxy.mode, self.proxy.latency_s
        if mode == "black_hole":
            self.poisoned = True
            return True
        if mode == "reset":
            return False
        if latency > 0:
            # The injected fault itself: this chunk arrives latency_s late.
            self.closed.wait(latency)
        try:
            dst.sendall(data)
        except OSError:
            return False
        return True

    def abort(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            _abort(self.client)
            if self.server is not None:
                _abort(self.server)
            self.proxy._forget(self)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode: Mode = "pass"
        self.latency_s = 0.0
        self.accepted = 0
        self.resets = 0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._flapper: threading.Thread | None = None
        self._flap_stop = threading.Event()

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy-accept").start()
        return self

    # --- what the test controls -------------------------------------------------------

    def pass_through(self) -> None:
        self._stop_flapping()
        self._set("pass", 0.0)

    def slow(self, latency_s: float) -> None:
        self._stop_flapping()
        self._set("pass", latency_s)

    def reset(self) -> None:
        self._stop_flapping()
        self._set("reset", 0.0)

    def black_hole(self) -> None:
        self._stop_flapping()
        self._set("black_hole", 0.0)

    def flap(self, up_s: float, down_s: float) -> None:
        """Pass for ``up_s``, reset for ``down_s``, again and again (until another mode is set)."""
        self._stop_flapping()
        self._flap_stop = stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                self._set("pass", 0.0)
                if stop.wait(up_s):
                    return
                self._set("reset", 0.0)
                stop.wait(down_s)

        self._flapper = threading.Thread(target=run, daemon=True, name="fault-proxy-flap")
        self._flapper.start()

    @property
    def open_links(self) -> int:
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        self._stop_flapping()
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in self._snapshot():
            link.abort()

    # --- machinery --------------------------------------------------------------------

    def _set(self, mode: Mode, latency_s: float) -> None:
        with self._lock:
            self.mode, self.latency_s = mode, latency_s
        if mode == "reset":
            for link in self._snapshot():
                self.resets += 1
                link.abort()
        elif mode == "pass":
            for link in self._snapshot():
                if link.poisoned:
                    link.abort()

    def _stop_flapping(self) -> None:
        self._flap_stop.set()
        if self._flapper is not None and self._flapper is not threading.current_thread():
            self._flapper.join(5.0)
        self._flapper = None

    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], _TICK_S)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            self.accepted += 1
            if self.mode == "reset":
                self.resets += 1
                _abort(client)
                continue
            link = _Link(self, client)
            with self._lock:
                self._links.add(link)
            if self.mode == "black_hole":
                link.poisoned = True  # never connected upstream: swallow until reset
                threading.Thread(target=self._swallow, args=(link,), daemon=True).start()
                continue
            threading.Thread(target=link.run, daemon=True, name="fault-proxy-link").start()

    @staticmethod
    def _swallow(link: _Link) -> None:
        """A black-holed connection: read and drop everything until the link is aborted."""
        while not link.closed.is_set():
            try:
                ready, _, _ = select.select([link.client], [], [], _TICK_S)
                if ready and not link.client.recv(65536):
                    break
            except (OSError, ValueError):
                break
        link.abort()


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll an observed condition with a bound (for state that has no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        threading.Event().wait(0.01)
