"""Helpers shared by test modules of several layers: free ports, a serving process, Redis probes."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil


def free_port() -> int:
    """A loopback port nothing listens on now (connections to it are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_pings(port: int) -> bool:
    """Whether a Redis answers PING on loopback ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_process(args: list[str]) -> Iterator[None]:
    """A redis-server started with ``args`` (its command line or a config file), up once it
    logs that it accepts connections (what the server says, not a clock), stopped after.
    Skips the test where redis-server is not installed."""
    import shutil

    import pytest

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen([binary, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail(f"redis-server exited with {proc.wait()} before accepting connections")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def throwaway_redis(*extra: str) -> Iterator[int]:
    """A redis-server on a free loopback port, no persistence, ``extra`` arguments added; yields the port."""
    port = free_port()
    with redis_process(["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--daemonize", "no", "--loglevel", "notice", *extra]):
        yield port


@contextlib.contextmanager
def serving_process(data_dir: Path) -> Iterator[tuple[psutil.Process, int]]:
    """``creditauth serve --channel local --plaintext`` on a free loopback port, ready when
    entered (the first call waits for the port through gRPC's own wait_for_ready)."""
    from creditauth.v1 import authorization_pb2_grpc as pb_grpc
    from tests.e2e.api_checks import request

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--channel", "local", "--plaintext", "--no-telemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            pb_grpc.CreditAuthorizationStub(ch).Authorize(request(0), timeout=180, wait_for_ready=True)
        yield psutil.Process(proc.pid), port
    finally:
        proc.terminate()
        proc.wait(60)
